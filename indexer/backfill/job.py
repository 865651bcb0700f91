"""Backfill and gap repair: fetch each candidate repo's two records with proof and index them.

Discovery pages the relay's collection directory (`listReposByCollection`, falling back to
`listRepos`), the `listRepos` of given PDS hosts, or takes DIDs as given; each page and its
cursor are saved together, so a killed job resumes at the page. Every candidate then gets
`com.atproto.sync.getRecord` for both `<collection>/self` paths from the PDS in its DID
document; the CAR is verified exactly as the firehose path verifies (signature + MST path),
and a proof of absence deletes a stale binding. All writes are guarded by `rev` in SQL, so
a backfill result never overwrites a newer firehose result.

The gap-repair worker drains `resync_queue` (filled by the pipeline on `#sync`, chain gaps,
an unavailable identity, and `OutdatedCursor`) through the same fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg

from atmx.indexer import metrics
from atmx.indexer.backfill.host_limiter import HostLimiter
from atmx.indexer.config import Settings
from atmx.indexer.identity.diddoc import DidInfo
from atmx.indexer.identity.http import BodyTooLarge, read_capped
from atmx.indexer.identity.resolver import IdentityResolver, ResolutionError
from atmx.indexer.index.bindings import PROTOCOL_BY_COLLECTION, plan_binding
from atmx.indexer.index.writes import IdentityUpdate, Rejection, WriteSet
from atmx.indexer.progress import Progress
from atmx.indexer.repo.crypto import key_from_did_key
from atmx.indexer.repo.syntax import is_did
from atmx.indexer.repo.verify import RecordProof, VerificationError, verify_record_proof
from atmx.indexer.store.index_store import BackfillStore, ResyncItem

log = logging.getLogger(__name__)

COLLECTIONS = tuple(PROTOCOL_BY_COLLECTION)  # org.xmtp.inbox, at.didcomm.keyPackage
RKEY = "self"
MAX_BODY = 16 << 20
LIST_BY_COLLECTION_LIMIT = 2000
LIST_REPOS_LIMIT = 1000
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
_TRANSIENT = frozenset({408, 425, 429, 500, 502, 503, 504})  # 501 Not Implemented is an answer
# the repo itself is gone or closed: retrying will not help, the firehose reports it anyway
_GONE = {
    "RepoNotFound": "repo_not_found",
    "RepoTakendown": "repo_takendown",
    "RepoSuspended": "repo_suspended",
    "RepoDeactivated": "repo_deactivated",
}


class FetchError(ValueError):
    """A repo could not be fetched with proof. `retriable`: worth trying again later."""

    def __init__(self, reason: str, message: str, *, retriable: bool = True) -> None:
        super().__init__(message)
        self.reason = reason
        self.retriable = retriable


class DiscoveryUnsupported(FetchError):
    def __init__(self, message: str) -> None:
        super().__init__("unsupported", message, retriable=False)


@dataclass(frozen=True, slots=True)
class Source:
    """A discovery source. kind: `collection` (listReposByCollection) or `repos` (listRepos)."""

    kind: str
    base: str  # https://host
    collection: str | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.base}" + (f":{self.collection}" if self.collection else "")


@dataclass(frozen=True, slots=True)
class Options:
    workers: int = 16
    host_rate: float = 3.0
    host_burst: int = 10
    host_concurrency: int = 4
    attempts: int = 5
    timeout: float = 30.0
    max_outstanding: int = 5000  # repos being worked on at once (bounds memory)
    allow_insecure_http: bool = False

    @classmethod
    def from_settings(cls, s: Settings) -> Options:
        return cls(
            workers=s.backfill_workers,
            host_rate=s.backfill_host_rate,
            host_burst=s.backfill_host_burst,
            host_concurrency=s.backfill_host_concurrency,
            allow_insecure_http=s.allow_insecure_http,
        )


@dataclass
class Summary:
    outcomes: dict[str, int] = field(default_factory=dict)
    discovered: int = 0

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


def http_base(url: str) -> str:
    """`wss://host/xrpc/...`, `host` or `https://host/` -> `https://host` (ws -> http for loopback)."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "https://" + url
    parts = urlsplit(url)
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


def default_sources(relay: str) -> list[Source]:
    base = http_base(relay)
    return [Source("collection", base, c) for c in COLLECTIONS]


def pds_sources(urls: Sequence[str]) -> list[Source]:
    return [Source("repos", http_base(u)) for u in urls]


class SyncClient:
    """GETs to sync endpoints: paced per host, retried with backoff, never stalling other hosts.

    A request first waits for its host's slot (at most `host_concurrency` in flight per host)
    and rate limiter, and only then takes one of the `workers` global slots, so requests
    queued behind a slow or rate-limited host never hold capacity the other hosts need.
    """

    def __init__(self, session: aiohttp.ClientSession, opts: Options) -> None:
        self.session = session
        self.opts = opts
        self.limiter = HostLimiter(opts.host_rate, opts.host_burst)
        self._global = asyncio.Semaphore(opts.workers)
        self._hosts: dict[str, asyncio.Semaphore] = {}

    def _host_slot(self, host: str) -> asyncio.Semaphore:
        slot = self._hosts.get(host)
        if slot is None:
            slot = self._hosts[host] = asyncio.Semaphore(self.opts.host_concurrency)
        return slot

    async def get(self, base: str, nsid: str, params: dict[str, str]) -> tuple[int, bytes]:
        """(status, body) of the first answer that is not a 429/5xx/network error."""
        parts = urlsplit(base)
        if parts.scheme != "https" and not (parts.scheme == "http" and self.opts.allow_insecure_http):
            raise FetchError("insecure_endpoint", f"{base} is not https", retriable=False)
        host = parts.netloc
        url = f"{base}/xrpc/{nsid}"
        last = ""
        for attempt in range(self.opts.attempts):
            status: int | None = None
            async with self._host_slot(host):
                await self.limiter.acquire(host)
                async with self._global:
                    try:
                        async with self.session.get(
                            url, params=params, timeout=aiohttp.ClientTimeout(total=self.opts.timeout)
                        ) as resp:
                            status = resp.status
                            body = await _read_body(resp)
                            pause = self.limiter.observe(host, status, resp.headers)
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        last = f"{type(exc).__name__}: {exc}"
                        pause = None
            if pause:
                metrics.BACKFILL_PAUSE_SECONDS.inc(pause)
            if status is None:
                metrics.BACKFILL_REQUESTS.labels(nsid, "network_error").inc()
            elif status in _TRANSIENT:
                metrics.BACKFILL_REQUESTS.labels(nsid, str(status)).inc()
                last = f"HTTP {status}"
            else:
                metrics.BACKFILL_REQUESTS.labels(nsid, str(status)).inc()
                return status, body
            if attempt + 1 < self.opts.attempts and not pause:
                # a 429 already blocks the host for as long as it asked; others back off with jitter
                cap = min(BACKOFF_MAX, BACKOFF_START * 2**attempt)
                await asyncio.sleep(random.uniform(cap / 2, cap))
        raise FetchError("unreachable", f"{url}: {last} after {self.opts.attempts} attempts")


async def _read_body(resp: aiohttp.ClientResponse) -> bytes:
    try:
        return await read_capped(resp, MAX_BODY)
    except BodyTooLarge:
        raise FetchError("too_large", f"{resp.url}: body over {MAX_BODY} bytes", retriable=False) from None


def _xrpc_error(body: bytes) -> str:
    try:
        err = json.loads(body)
    except ValueError:
        return ""
    return str(err.get("error", "")) if isinstance(err, dict) else ""


class Backfiller:
    """Discovery, proof fetching and gap repair over one store, resolver and HTTP session."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        resolver: IdentityResolver,
        session: aiohttp.ClientSession,
        opts: Options,
        *,
        progress: Progress | None = None,
        on_tracked: Callable[[str], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = BackfillStore(pool)
        self.resolver = resolver
        self.client = SyncClient(session, opts)
        self.opts = opts
        self.progress = progress or Progress(None)
        self.on_tracked = on_tracked
        self.clock = clock
        self._resolving = asyncio.Semaphore(opts.workers)

    # --- discovery ---

    async def discover(self, source: Source, summary: Summary | None = None) -> int:
        """Page a source into backfill_repos from where it stopped; returns the new repos."""
        state = await self.store.source(source.key)
        if state is not None and state.complete:
            return 0
        cursor = state.cursor if state is not None else None
        nsid = "com.atproto.sync.listReposByCollection" if source.kind == "collection" else "com.atproto.sync.listRepos"
        new_total = 0
        while True:
            params = {"limit": str(LIST_BY_COLLECTION_LIMIT if source.kind == "collection" else LIST_REPOS_LIMIT)}
            if source.collection:
                params["collection"] = source.collection
            if cursor:
                params["cursor"] = cursor
            status, body = await self.client.get(source.base, nsid, params)
            if status != 200:
                if source.kind == "collection" and status in (400, 401, 403, 404, 405, 501):
                    raise DiscoveryUnsupported(f"{source.base} answers {nsid} with HTTP {status} {_xrpc_error(body)}")
                raise FetchError("discovery_failed", f"{source.base} {nsid}: HTTP {status} {_xrpc_error(body)}")
            dids, next_cursor = _parse_page(body)
            # a repeated cursor would loop forever: treat it as the end
            complete = not next_cursor or not dids or next_cursor == cursor
            new = await self.store.save_page(source.key, dids, None if complete else next_cursor, complete)
            new_total += new
            metrics.BACKFILL_DISCOVERED.labels(source.kind).inc(new)
            self.progress.add_total(new)
            self._publish()
            if summary is not None:
                summary.discovered += new
            if complete:
                return new_total
            cursor = next_cursor

    async def discover_all(self, sources: Sequence[Source], summary: Summary | None = None) -> None:
        """Discover from every source; a relay without the collection directory falls back to listRepos."""
        fallbacks: list[Source] = []
        for source in sources:
            try:
                await self.discover(source, summary)
            except DiscoveryUnsupported as exc:
                log.warning("%s; falling back to listRepos", exc)
                fallback = Source("repos", source.base)
                if fallback not in fallbacks:
                    fallbacks.append(fallback)
        for source in fallbacks:
            await self.discover(source, summary)

    # --- one repo ---

    async def _resolve(self, did: str, force: bool = False) -> DidInfo:
        async with self._resolving:
            try:
                return await self.resolver.resolve_did(did, force_refresh=force)
            except ResolutionError as exc:
                retriable = exc.reason == "unreachable"
                raise FetchError(f"identity_{exc.reason}", f"{did}: {exc}", retriable=retriable) from None

    async def _proof(self, did: str, info: DidInfo, collection: str) -> RecordProof | None:
        """The verified proof for `<collection>/self`, or None when the PDS denies it without proof."""
        assert info.pds is not None
        params = {"did": did, "collection": collection, "rkey": RKEY}
        status, body = await self.client.get(http_base(info.pds), "com.atproto.sync.getRecord", params)
        if status != 200:
            error = _xrpc_error(body)
            if error in _GONE:
                raise FetchError(_GONE[error], f"{did}: {error}", retriable=False)
            if error == "RecordNotFound" or status == 404:
                # some PDS implementations answer this instead of a CAR proving absence: an
                # unproven claim, so it removes nothing
                return None
            raise FetchError("http_error", f"{did} getRecord {collection}: HTTP {status} {error}")
        return await self._verify(did, info, collection, body)

    async def _verify(self, did: str, info: DidInfo, collection: str, car: bytes) -> RecordProof:
        def check(signing_key: str | None) -> RecordProof:
            if signing_key is None:
                raise VerificationError("no_signing_key", "no #atproto key in the DID document")
            return verify_record_proof(
                did=did, collection=collection, rkey=RKEY, car=car, key=key_from_did_key(signing_key), now=self.clock()
            )

        try:
            return check(info.signing_key)
        except VerificationError as exc:
            if exc.reason != "bad_signature":
                raise
        # the key may have rotated since we cached the document: refresh it once
        fresh = await self._resolve(did, force=True)
        if fresh.signing_key == info.signing_key:
            raise VerificationError("bad_signature", "signature does not verify with the current key")
        return check(fresh.signing_key)

    async def fetch_repo(self, did: str, *, refresh_identity: bool = False) -> WriteSet:
        """Fetch and verify both records of `did`; the index change, not yet applied."""
        info = await self._resolve(did, force=refresh_identity)
        if not info.pds:
            raise FetchError("no_pds", f"{did}: no PDS in the DID document", retriable=False)
        try:
            proofs = await asyncio.gather(*(self._proof(did, info, c) for c in COLLECTIONS))
        except VerificationError as exc:
            metrics.VERIFICATIONS.labels("record_proof", exc.reason).inc()
            raise FetchError(exc.reason, f"{did}: {exc}") from None
        ws = WriteSet(did=did)
        newest: RecordProof | None = None
        for collection, proof in zip(COLLECTIONS, proofs, strict=True):
            if proof is None:
                continue
            metrics.VERIFICATIONS.labels("record_proof", "ok").inc()
            if newest is None or proof.rev > newest.rev:
                newest = proof
            protocol = PROTOCOL_BY_COLLECTION[collection]
            if proof.cid is None or proof.record is None:
                ws.deletes.append((protocol, proof.rev))
                continue
            planned = plan_binding(did, proof.rev, f"{collection}/{RKEY}", proof.cid, proof.record)
            if isinstance(planned, Rejection):
                ws.rejections.append(planned)
            else:
                ws.upserts.append(planned)
        if newest is not None:
            # moves forward only (SQL); keeps the live pipeline's since/prevData chain check right
            ws.repo_state = (newest.rev, newest.data_cid)
        if ws.upserts:
            handle, verified = await self.resolver.verify_handle(info)
            ws.identity = IdentityUpdate(handle=handle, handle_verified=verified, pds=info.pds)
        return ws

    async def process(self, did: str, job: str, resync: ResyncItem | None = None) -> str:
        """Fetch, verify and store one repo, recording its state; returns the outcome."""
        ws: WriteSet | None = None
        try:
            ws = await self.fetch_repo(
                did, refresh_identity=resync is not None and resync.reason == "identity_unavailable"
            )
            state, error, outcome = "done", None, "ok"
        except FetchError as exc:
            state = "failed" if exc.retriable else "skipped"
            error, outcome = f"{exc.reason}: {exc}"[:500], exc.reason
            log.info("%s %s: %s", job, state, error)
        await self.store.record(ws, did, state, error, resync)
        if ws is not None and ws.upserts and self.on_tracked is not None:
            self.on_tracked(did)
        metrics.BACKFILL_REPOS.labels(job, outcome).inc()
        return outcome

    # --- the backfill job ---

    async def run(self, sources: Sequence[Source], *, dids: Sequence[str] = (), restart: bool = False) -> Summary:
        """Discover and fetch until every candidate is finished; resumes a killed run."""
        only = list(dict.fromkeys(dids)) if dids and not sources else None
        summary = Summary()
        if restart:
            await self.store.reset(only)
        if dids:
            bad = [d for d in dids if not is_did(d)]
            if bad:
                raise ValueError(f"not a DID: {bad[0]!r}")
            await self.store.add(list(dids), "manual")
        counts = await self.store.counts(only)
        finished = counts.get("done", 0) + counts.get("skipped", 0)
        self.progress.start(finished, sum(counts.values()))
        self._publish()
        discovery = asyncio.create_task(self.discover_all(sources, summary)) if sources else None
        try:
            await self._fetch_todo(discovery, only, summary)
            if discovery is not None:
                await discovery
        finally:
            if discovery is not None and not discovery.done():
                discovery.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await discovery
            self.progress.finish()
            self._publish()
        return summary

    async def _fetch_todo(self, discovery: asyncio.Task[None] | None, only: list[str] | None, summary: Summary) -> None:
        outstanding = asyncio.Semaphore(self.opts.max_outstanding)
        tasks: set[asyncio.Task[None]] = set()
        last_id = 0

        async def one(did: str) -> None:
            try:
                outcome = await self.process(did, "backfill")
                summary.count(outcome)
                self.progress.advance(ok=outcome == "ok")
                self._publish()
            finally:
                outstanding.release()

        try:
            while True:
                discovering = discovery is not None and not discovery.done()
                rows = await self.store.todo(last_id, 500, only)
                if not rows:
                    if not discovering:
                        break
                    await asyncio.sleep(0.2)
                    continue
                for row_id, did in rows:
                    last_id = row_id
                    await outstanding.acquire()
                    task = asyncio.create_task(one(did))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _publish(self) -> None:
        p = self.progress
        metrics.BACKFILL_DONE.set(p.done)
        metrics.BACKFILL_TOTAL.set(p.total)
        metrics.BACKFILL_ERRORS.set(p.errors)
        metrics.BACKFILL_RATE.set(p.rate())
        eta = p.eta()
        metrics.BACKFILL_ETA.set(-1 if eta is None else eta)

    # --- gap repair ---

    async def repair_forever(self, poll: float = 1.0) -> None:
        """Drain resync_queue as it fills; failed repairs come back with exponential delay."""
        busy: set[str] = set()
        tasks: set[asyncio.Task[None]] = set()
        capacity = self.opts.workers * 4

        async def one(item: ResyncItem) -> None:
            try:
                await self.process(item.did, "repair", item)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("gap repair of %s could not be saved: %s", item.did, exc)
            finally:
                busy.discard(item.did)

        try:
            while True:
                try:
                    room = capacity - len(busy)
                    items = await self.store.due_resyncs(room + len(busy)) if room > 0 else []
                    metrics.RESYNC_QUEUE.set(await self.store.resync_queue_size())
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    metrics.DB_ERRORS.labels("resync_queue").inc()
                    log.warning("cannot read resync_queue: %s", exc)
                    items = []
                for item in items:
                    if item.did in busy:
                        continue
                    busy.add(item.did)
                    task = asyncio.create_task(one(item))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                await asyncio.sleep(poll)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def queue_all_candidates(self, reason: str = "outdated_cursor") -> int:
        """OutdatedCursor: events were lost upstream, so re-fetch every repo we know of."""
        n = await self.store.queue_all(reason)
        metrics.RESYNCS_QUEUED.labels(reason).inc(n)
        log.warning("queued %d repos for re-fetch (%s)", n, reason)
        return n


def _parse_page(body: bytes) -> tuple[list[str], str | None]:
    try:
        data: Any = json.loads(body)
    except ValueError:
        raise FetchError("bad_response", "repo list is not JSON") from None
    repos = data.get("repos") if isinstance(data, dict) else None
    if not isinstance(repos, list):
        raise FetchError("bad_response", "repo list has no repos array")
    dids = []
    for r in repos:
        if not isinstance(r, dict) or not isinstance(r.get("did"), str) or not is_did(r["did"]):
            continue
        if r.get("active") is False:
            continue  # deactivated/taken down: getRecord would refuse; the firehose reports reactivation
        dids.append(r["did"])
    cursor = data.get("cursor")
    return dids, cursor if isinstance(cursor, str) and cursor else None


def read_dids_file(text: str) -> list[str]:
    """One DID per line; blank lines and `#` comments ignored."""
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


@contextlib.asynccontextmanager
async def backfiller(
    settings: Settings,
    pool: asyncpg.Pool,
    session: aiohttp.ClientSession,
    *,
    resolver: IdentityResolver | None = None,
    progress: Progress | None = None,
    on_tracked: Callable[[str], None] | None = None,
    opts: Options | None = None,
) -> AsyncIterator[Backfiller]:
    """A Backfiller wired from settings (its own identity resolver unless one is given)."""
    from atmx.indexer.store.index_store import Store

    own = resolver is None
    if resolver is None:
        resolver = IdentityResolver(
            plc_url=settings.plc_url,
            handle_resolver=settings.handle_resolver,
            cache=Store(pool),
            allow_insecure_http=settings.allow_insecure_http,
            session=session,
            on_result=metrics.observe_identity,
        )
    try:
        yield Backfiller(
            pool,
            resolver,
            session,
            opts or Options.from_settings(settings),
            progress=progress,
            on_tracked=on_tracked,
        )
    finally:
        if own:
            await resolver.close()
