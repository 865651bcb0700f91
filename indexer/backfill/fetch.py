"""One repo's indexed records, fetched with proof: the write set of the account's current state.

For each family of the registry: a single-record family is one `com.atproto.sync.getRecord`
of `<collection>/self`; a many-record family (Catbird devices) lists its record keys with
`com.atproto.repo.listRecords` (a hint, unproven) and fetches each listed key, and each key the
index already holds, with its own getRecord proof. A proof of absence deletes; an unproven
"not found" deletes nothing. Per-record proofs cost a few small requests per account where
`com.atproto.sync.getRepo` would download the whole repository (megabytes for an active
account), and reference PDSes rate-limit both per IP alike.

The proofs of one repo may come from different commits when the account writes meanwhile:
each binding keeps the rev of its own proof, and the repo state is set from the *oldest*
proof, so a live commit that falls between two proofs is still applied.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Final

from atmx.indexer import metrics
from atmx.indexer.backfill.client import FetchError, SyncClient, http_base, xrpc_error
from atmx.indexer.identity.diddoc import DidInfo
from atmx.indexer.identity.resolver import IdentityResolver, ResolutionError
from atmx.indexer.index.plan import plan_record
from atmx.indexer.index.writes import IdentityUpdate, Proof, RecordDelete, Rejection, WriteSet
from atmx.indexer.records.family import Family
from atmx.indexer.records.registry import FAMILIES
from atmx.indexer.repo.crypto import key_from_did_key
from atmx.indexer.repo.syntax import is_record_key
from atmx.indexer.repo.verify import RecordProof, VerificationError, verify_record_proof

__all__ = ["KnownRkeys", "RepoFetcher"]

LIST_RECORDS_LIMIT: Final = 100
MAX_LISTED_RECORDS: Final = 1000  # per account and collection: devices are a handful
# the repo itself is gone or closed: retrying will not help, the firehose reports it anyway
GONE: Final = {
    "RepoNotFound": "repo_not_found",
    "RepoTakendown": "repo_takendown",
    "RepoSuspended": "repo_suspended",
    "RepoDeactivated": "repo_deactivated",
}

# (did, collection) -> record keys the index holds, so a deleted record is proven gone
KnownRkeys = Callable[[str, str], Awaitable[Sequence[str]]]


async def _no_known(_did: str, _collection: str) -> Sequence[str]:
    return ()


class RepoFetcher:
    def __init__(
        self,
        resolver: IdentityResolver,
        client: SyncClient,
        *,
        known_rkeys: KnownRkeys = _no_known,
        workers: int = 16,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.resolver = resolver
        self.client = client
        self.known_rkeys = known_rkeys
        self.clock = clock
        self._resolving = asyncio.Semaphore(workers)

    async def resolve(self, did: str, force: bool = False) -> DidInfo:
        async with self._resolving:
            try:
                return await self.resolver.resolve_did(did, force_refresh=force)
            except ResolutionError as exc:
                # a directory answering garbage is as likely to recover as one not answering
                retriable = exc.reason in ("unreachable", "bad_document")
                raise FetchError(f"identity_{exc.reason}", f"{did}: {exc}", retriable=retriable) from None

    async def fetch_repo(self, did: str, *, refresh_identity: bool = False) -> WriteSet:
        """Fetch and verify every indexed record of `did`; the index change, not yet applied."""
        info = await self.resolve(did, force=refresh_identity)
        if not info.pds:
            raise FetchError("no_pds", f"{did}: no PDS in the DID document", retriable=False)
        try:
            per_family = await asyncio.gather(*(self._family(did, info, f) for f in FAMILIES))
        except VerificationError as exc:
            metrics.VERIFICATIONS.labels("record_proof", exc.reason).inc()
            raise FetchError(exc.reason, f"{did}: {exc}") from None
        ws = WriteSet(did=did)
        oldest: RecordProof | None = None
        for family, proofs in zip(FAMILIES, per_family, strict=True):
            for rkey, proof, signing_key in proofs:
                metrics.VERIFICATIONS.labels("record_proof", "ok").inc()
                if oldest is None or proof.rev < oldest.rev:
                    oldest = proof
                if proof.cid is None:
                    ws.deletes.append(RecordDelete(family.nsid, rkey, proof.rev))
                    continue
                source = Proof(proof.car, signing_key, info.pds)
                planned, (protocol, reason) = plan_record(
                    did, proof.rev, f"{family.nsid}/{rkey}", proof.cid, proof.block, source
                )
                metrics.RECORDS.labels(protocol, reason).inc()
                if isinstance(planned, Rejection):
                    ws.reject(planned)
                else:
                    ws.upserts.append(planned)
        if oldest is not None:
            # moves forward only; the oldest proof, so no live commit after it is taken as stale
            ws.repo_state = (oldest.rev, oldest.data_cid)
        if ws.upserts:
            handle, verified = await self.resolver.verify_handle(info)
            ws.identity = IdentityUpdate(handle=handle, handle_verified=verified, pds=info.pds)
        return ws

    async def _family(self, did: str, info: DidInfo, family: Family) -> list[tuple[str, RecordProof, str | None]]:
        if family.single:
            rkeys: Sequence[str] = ("self",)
        else:
            listed = await self._list_rkeys(did, info, family.nsid)
            rkeys = sorted(set(listed) | set(await self.known_rkeys(did, family.nsid)))
        proofs = await asyncio.gather(*(self._proof(did, info, family.nsid, rkey) for rkey in rkeys))
        return [(rkey, p[0], p[1]) for rkey, p in zip(rkeys, proofs, strict=True) if p is not None]

    async def _list_rkeys(self, did: str, info: DidInfo, collection: str) -> list[str]:
        """The record keys the PDS lists for a collection (not a proof: each is fetched with one)."""
        assert info.pds is not None
        rkeys: list[str] = []
        cursor: str | None = None
        while len(rkeys) < MAX_LISTED_RECORDS:
            params = {"repo": did, "collection": collection, "limit": str(LIST_RECORDS_LIMIT)}
            if cursor:
                params["cursor"] = cursor
            status, body = await self.client.get(http_base(info.pds), "com.atproto.repo.listRecords", params)
            if status != 200:
                error = xrpc_error(body)
                if error in GONE:
                    raise FetchError(GONE[error], f"{did}: {error}", retriable=False)
                raise FetchError("http_error", f"{did} listRecords {collection}: HTTP {status} {error}")
            page, next_cursor = _parse_records_page(body, did, collection)
            rkeys.extend(page)
            if not next_cursor or not page or next_cursor == cursor:
                break
            cursor = next_cursor
        return rkeys[:MAX_LISTED_RECORDS]

    async def _proof(
        self, did: str, info: DidInfo, collection: str, rkey: str
    ) -> tuple[RecordProof, str | None] | None:
        """The verified proof of one record (and the key that verified it), or None when the PDS
        denies it without proof."""
        assert info.pds is not None
        params = {"did": did, "collection": collection, "rkey": rkey}
        status, body = await self.client.get(http_base(info.pds), "com.atproto.sync.getRecord", params)
        if status != 200:
            error = xrpc_error(body)
            if error in GONE:
                raise FetchError(GONE[error], f"{did}: {error}", retriable=False)
            if error == "RecordNotFound" or status == 404:
                # some PDS implementations answer this instead of a CAR proving absence: an
                # unproven claim, so it removes nothing
                return None
            raise FetchError("http_error", f"{did} getRecord {collection}: HTTP {status} {error}")
        return await self._verify(did, info, collection, rkey, body)

    async def _verify(
        self, did: str, info: DidInfo, collection: str, rkey: str, car: bytes
    ) -> tuple[RecordProof, str | None]:
        def check(signing_key: str | None) -> tuple[RecordProof, str | None]:
            if signing_key is None:
                raise VerificationError("no_signing_key", "no #atproto key in the DID document")
            key = key_from_did_key(signing_key)
            proof = verify_record_proof(did=did, collection=collection, rkey=rkey, car=car, key=key, now=self.clock())
            return proof, signing_key

        try:
            return check(info.signing_key)
        except VerificationError as exc:
            if exc.reason != "bad_signature":
                raise
        # the key may have rotated since we cached the document: refresh it once
        fresh = await self.resolve(did, force=True)
        if fresh.signing_key == info.signing_key:
            raise VerificationError("bad_signature", "signature does not verify with the current key")
        return check(fresh.signing_key)


def _parse_records_page(body: bytes, did: str, collection: str) -> tuple[list[str], str | None]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise FetchError("bad_response", "record list is not JSON") from None
    records = data.get("records") if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise FetchError("bad_response", "record list has no records array")
    prefix = f"at://{did}/{collection}/"
    rkeys = []
    for r in records:
        uri = r.get("uri") if isinstance(r, dict) else None
        if isinstance(uri, str) and uri.startswith(prefix) and is_record_key(uri[len(prefix) :]):
            rkeys.append(uri[len(prefix) :])
    cursor = data.get("cursor")
    return rkeys, cursor if isinstance(cursor, str) and cursor else None
