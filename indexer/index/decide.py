"""What an event writes, rejects or queues for a proof re-fetch (pure).

A function of the event, the repo's state as the index holds it, the account's signing key and
the time: no I/O, no metrics. The pipeline gathers the inputs (which may take I/O), calls these,
counts what the Decision reports and hands the writes on.

The rules that keep a hostile relay from changing what is served:
- every commit of an indexed repo is verified (signature, and the ops inverted back to
  `prevData`), not only the commits that name an indexed collection: a relay that drops the
  `delete` of a binding from a commit's op list is caught by the inversion;
- a commit must chain onto the last one verified (`since` = stored rev, `prevData` = stored
  MST root); a gap, a missing `prevData` or a diff that cannot be inverted queues a re-fetch
  of the repo's records with proof from its PDS, whose signed answer wins;
- the first commit atmx sees of an account is not trusted for its records (it could be an old
  commit replayed): it starts the account's chain and queues the proof fetch;
- a bad signature is first retried with a refreshed DID document (a rotated key) and is never
  a reason to fetch anything, so a forger cannot make atmx call arbitrary hosts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from atmx.indexer.firehose.frames import AccountEvent, CommitEvent, MalformedEvent, SyncEvent
from atmx.indexer.index.plan import RecordOutcome, plan_record
from atmx.indexer.index.writes import Proof, RecordDelete, Rejection, StatusUpdate, WriteSet
from atmx.indexer.records.registry import COLLECTION_PREFIXES, family_of, split_path
from atmx.indexer.repo.crypto import PublicKey
from atmx.indexer.repo.verify import VerificationError, VerifiedCommit, verify_commit_message, verify_sync_message

__all__ = [
    "REFETCH_AFTER",
    "Decision",
    "RepoState",
    "decide_account",
    "decide_commit",
    "decide_malformed",
    "decide_sync",
    "internal_error",
]

# Refusals of a commit whose signature verified but whose diff does not prove what the relay
# says (an incomplete CAR, ops that do not match the tree or do not invert to prevData): the
# commit is real, the relay's account of it is not, so the repo is re-fetched with proof. A
# bad signature is not here: a forger could otherwise make atmx fetch from any PDS at will.
REFETCH_AFTER: Final = frozenset(
    {"missing_block", "bad_ops", "bad_mst", "not_deleted", "cid_mismatch", "ops_do_not_invert"}
)


@dataclass(slots=True)
class RepoState:
    """What the index holds of a repo's commit chain."""

    rev: str | None  # last verified commit (or proof)
    data_cid: str | None  # its MST root


@dataclass(slots=True)
class Decision:
    writes: WriteSet | None = None
    refresh_key: bool = False  # the signature failed with the cached key: refresh it, decide again
    verification: tuple[str, str] | None = None  # (kind, reason): atmx_verifications_total
    stale: str | None = None  # event kind of a replay: atmx_stale_events_total
    records: list[RecordOutcome] = field(default_factory=list)  # atmx_records_total
    ops: list[tuple[str, str]] = field(default_factory=list)  # (collection, action): atmx_matched_ops_total


def decide_commit(
    ev: CommitEvent,
    state: RepoState | None,
    key: PublicKey | None,
    *,
    now: datetime,
    key_refreshed: bool = False,
    signing_key: str | None = None,
    pds: str | None = None,
) -> Decision:
    """A `#commit` of an indexed repo (`state` set) or one naming an indexed collection."""
    if state is not None and state.rev is not None and ev.rev <= state.rev:
        return Decision(stale="commit")
    if key is None:
        ws = WriteSet(did=ev.repo, rejections=[Rejection("commit", "no_signing_key", f"rev {ev.rev}")])
        return Decision(ws, verification=("commit", "no_signing_key"))
    try:
        verified = verify_commit_message(
            did=ev.repo,
            rev=ev.rev,
            commit_cid=ev.commit,
            blocks=ev.blocks,
            ops=ev.ops,
            prev_data=ev.prev_data,
            key=key,
            now=now,
        )
    except VerificationError as exc:
        if exc.reason == "bad_signature" and not key_refreshed:
            return Decision(refresh_key=True)
        ws = WriteSet(did=ev.repo, rejections=[Rejection("commit", exc.reason, f"rev {ev.rev}: {exc}"[:500])])
        if exc.reason in REFETCH_AFTER:
            ws.resync_reason = "unverifiable_commit"
        return Decision(ws, verification=("commit", exc.reason))

    decision = Decision(verification=("commit", "ok"))
    ws = decision.writes = WriteSet(did=ev.repo, repo_state=(verified.rev, verified.data_cid))
    decision.ops = [(op.path.partition("/")[0], op.action) for op in ev.ops if op.path.startswith(COLLECTION_PREFIXES)]
    if state is None:
        # the first commit seen of this account may be an old one replayed: it starts the chain,
        # and the records come from a proof of the repo's current state
        ws.create_account = True
        ws.resync_reason = "new_account"
        return decision
    ws.resync_reason = _chain_gap(state, ev.since, verified.prev_data)
    if decision.ops:
        _plan_ops(verified, ws, decision, Proof(b"", signing_key, pds))
    return decision


def _plan_ops(verified: VerifiedCommit, ws: WriteSet, decision: Decision, source: Proof) -> None:
    for path in verified.deletes:
        family = family_of(path)
        if family is not None:
            collection, rkey = split_path(path)
            ws.deletes.append(RecordDelete(collection, rkey, verified.rev))
    for path, (cid, block) in verified.writes.items():
        if family_of(path) is None:
            continue
        try:
            proof: Proof | None = Proof(verified.proof(path), source.signing_key, source.pds)
        except VerificationError:
            proof = None  # the diff lacks a node of the path: the record stays unproven below
        planned, outcome = plan_record(ws.did, verified.rev, path, cid, block, proof)
        decision.records.append(outcome)
        if isinstance(planned, Rejection):
            ws.reject(planned)
        else:
            ws.upserts.append(planned)
            if proof is None or planned.reason == "missing_block":
                ws.resync_reason = ws.resync_reason or "unverifiable_commit"


def _chain_gap(state: RepoState, since: str | None, prev_data: str | None) -> str | None:
    """Why this commit does not provably follow the last one verified, or None when it does."""
    if state.rev is None or state.data_cid is None:
        return "missed_commit"  # an account known only by name (a tracked DID without repo state)
    if since != state.rev:
        return "missed_commit"
    if prev_data is None:
        return "no_prev_data"  # the ops cannot be shown complete: something may have been dropped
    if prev_data != state.data_cid:
        return "missed_commit"
    return None


def decide_sync(
    ev: SyncEvent, state: RepoState | None, key: PublicKey | None, *, now: datetime, key_refreshed: bool = False
) -> Decision:
    """A `#sync`: the repo was reset to a signed commit; its records may now be anything."""
    if state is not None and state.rev is not None and ev.rev <= state.rev:
        return Decision(stale="sync")
    ws = WriteSet(did=ev.did)
    if key is None:
        ws.rejections.append(Rejection("sync", "no_signing_key", f"rev {ev.rev}"))
        return Decision(ws, verification=("sync", "no_signing_key"))
    try:
        verified = verify_sync_message(did=ev.did, rev=ev.rev, blocks=ev.blocks, key=key, now=now)
    except VerificationError as exc:
        if exc.reason == "bad_signature" and not key_refreshed:
            return Decision(refresh_key=True)
        ws.rejections.append(Rejection("sync", exc.reason, f"rev {ev.rev}: {exc}"[:500]))
        return Decision(ws, verification=("sync", exc.reason))
    if state is None or state.data_cid != verified.data_cid:
        ws.resync_reason = "sync_event"
    ws.repo_state = (verified.rev, verified.data_cid)
    return Decision(ws, verification=("sync", "ok"))


def decide_account(ev: AccountEvent) -> Decision:
    status = None if ev.active else (ev.status or "deactivated")
    return Decision(WriteSet(did=ev.did, status=StatusUpdate(active=ev.active, status=status)))


def decide_malformed(ev: MalformedEvent) -> Decision:
    """Whatever the event carried is lost from the stream: re-fetch the repo's records with proof."""
    if ev.did is None:
        return Decision()
    ws = WriteSet(did=ev.did, rejections=[Rejection("event", ev.reason, ev.message[:500])])
    ws.resync_reason = "malformed_event"
    return Decision(ws)


def internal_error(did: str, exc: BaseException) -> WriteSet:
    """An event whose processing failed unexpectedly: recorded, and its repo re-fetched with proof."""
    ws = WriteSet(did=did, rejections=[Rejection("event", "internal_error", f"{type(exc).__name__}: {exc}"[:500])])
    ws.resync_reason = "internal_error"
    return ws
