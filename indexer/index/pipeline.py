"""filter -> verify -> store: per-DID ordering, batched writes, and a cursor that never skips work.

The stream hands every decoded event to `offer`, in seq order, synchronously. An event about
nothing atmx indexes only moves the cursor. An event atmx needs is processed on the spot when
all it needs is in memory (the repo's state, a fresh DID document): verification is CPU work,
so on a warm index that is nearly always the case. When it needs I/O (a DID document or a
repo state to load, a handle to check, an `#identity` to re-resolve) it goes into a chain of
its DID, run by a task; every later event of that DID queues behind it, so each repo's
events apply strictly in order while other DIDs go on.

Processed events join the open batch. One writer applies a batch in one transaction
together with the cursor, the low-water mark (watermark.py) as it stood when the batch was
sealed: every event at or below it is in this batch or an earlier one, or needed no write.
A crash at any moment therefore resumes at or before the first event whose write was lost.
While one batch commits the next one fills, so batches grow with the load and a quiet
stream is written event by event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

import asyncpg

from atmx.indexer import metrics
from atmx.indexer.firehose.frames import (
    AccountEvent,
    CommitEvent,
    CommitSeen,
    ErrorEvent,
    Event,
    IdentityEvent,
    InfoEvent,
    MalformedEvent,
    SkippedEvent,
    SyncEvent,
    UnknownEvent,
    event_did,
    touches_collections,
)
from atmx.indexer.firehose.watermark import Watermark
from atmx.indexer.identity.diddoc import DidInfo
from atmx.indexer.identity.resolver import IdentityResolver, ResolutionError
from atmx.indexer.index.bindings import plan_binding, protocol_of
from atmx.indexer.index.writes import CursorUpdate, IdentityUpdate, Rejection, StatusUpdate, WriteSet
from atmx.indexer.repo.crypto import PublicKey, key_from_did_key
from atmx.indexer.repo.verify import VerificationError, VerifiedCommit, verify_commit_message, verify_sync_message
from atmx.indexer.store.index_store import RepoState, Store

log = logging.getLogger(__name__)

IDENTITY_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
DB_RETRY_MAX_DELAY = 10.0
# how often the cursor of a stretch with nothing to write is saved (the issue asks for 1 s at most)
CURSOR_SAVE_SECONDS = 0.1
# after a write, let the next batch fill this long: under load one transaction per window, not
# one per event; a quiet stream's first write still goes out at once
BATCH_WINDOW_SECONDS = 0.025
# connection-level failures and transient conflicts: the write is retried as it is
DB_DOWN = (
    TimeoutError,
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TransactionRollbackError,
    # the pool's reset of a connection the server just closed can end in a protocol-state error
    asyncpg.InternalClientError,
)

# Refusals where the commit was probably real but its diff cannot prove it (a CAR missing an MST
# node, two ops on one path as the reference PDS emits for a create+delete in one applyWrites):
# the repo is re-fetched with proof, so the index still converges. A bad signature is not: a
# forger could otherwise make atmx fetch from any PDS at will.
REFETCH_AFTER: Final = frozenset({"missing_block", "bad_ops"})

_DEFER: Final = object()  # _process_now: this event needs I/O, run it in its DID's chain


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


class Pipeline:
    def __init__(
        self,
        store: Store,
        resolver: IdentityResolver,
        *,
        upstream: str,
        max_in_flight: int = 2000,
        start_cursor: int | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.resolver = resolver
        self.upstream = upstream
        self.clock = clock
        self.max_in_flight = max_in_flight
        # DIDs with an accounts row; shared with the backfill job, which adds the repos it indexes
        self.tracked: set[str] = set()
        self.repos: dict[str, RepoState] = {}  # the tracked repos whose state has been read
        self.mark = Watermark(start_cursor)
        self._chains: dict[str, deque[Event]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._batch: list[WriteSet] = []  # processed, waiting for the next transaction
        self._seen: dict[str, str] = {}  # chain revs to save with the next transaction
        self._writing = 0  # write sets in the transaction under way
        self._write_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._saved: int | None = start_cursor
        # called after each applied write (e.g. to wake the XMTP stage for new bindings)
        self.on_written: Callable[[WriteSet], None] | None = None

    async def load(self) -> None:
        # only the DIDs: a repo's state is read on its first event (_state), so memory follows
        # the repos that are active, and a restart over millions of accounts starts at once
        self.tracked = await self.store.tracked_dids()
        self.repos = {}
        metrics.TRACKED_REPOS.set(len(self.tracked))

    # --- intake (called by the stream loop, in seq order) ---

    def wants(self, did: str) -> bool:
        """Whether events of `did` matter beyond their seq (the pre-filter asks this)."""
        # a DID whose first indexed commit is still in flight is not tracked yet, but its later
        # events (an unrelated commit, #account, #identity) must not be dropped because of that
        return did in self.tracked or did in self._chains

    def offer(self, ev: Event) -> bool:
        """Take one decoded event; True when the caller must stop handing more until `wait_room()`.

        Never blocks. Events that only move the cursor cannot fill the pipeline, so they return
        False without looking (this is the path nearly every firehose event takes).
        """
        if isinstance(ev, SkippedEvent):
            self.mark.skip(ev.seq, ev.time)
            return False
        if isinstance(ev, UnknownEvent):
            if ev.seq is not None:
                self.mark.skip(ev.seq, None)
            return False
        if isinstance(ev, InfoEvent | ErrorEvent):
            return False
        if isinstance(ev, CommitEvent) and not touches_collections(ev):
            ev = CommitSeen(ev.seq, ev.repo, ev.rev, ev.since, ev.time)
        seq = ev.seq
        time_ = None if isinstance(ev, MalformedEvent) else ev.time
        did = event_did(ev)
        if did is None:  # a malformed event naming no valid DID: count it and move on
            if isinstance(ev, MalformedEvent):
                self._malformed_writes(ev)
            self.mark.skip(seq, None)
            return False
        if not isinstance(ev, CommitEvent | MalformedEvent) and not self.wants(did):
            self.mark.skip(seq, time_)
            return False
        self.mark.received(seq, time_)
        chain = self._chains.get(did)
        if chain is not None:
            chain.append(ev)
            return self.busy()
        ws = self._process_now(ev)
        if ws is _DEFER:
            self._chains[did] = deque((ev,))
            self._idle.clear()
            task = asyncio.create_task(self._run_chain(did))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._emit(seq, ws)  # type: ignore[arg-type]
        return self.busy()

    def in_flight(self) -> int:
        """Events received and not yet written (the back-pressure measure)."""
        return len(self.mark) + len(self._batch) + self._writing

    def busy(self) -> bool:
        return self.in_flight() >= self.max_in_flight

    async def wait_room(self) -> None:
        """Return once `busy()` is over."""
        while self.busy():
            self._room.clear()
            await self._room.wait()

    async def drain(self) -> None:
        """Wait until everything offered is processed and written, with the cursor."""
        await self._idle.wait()
        await self.flush()

    async def flush_cursor(self) -> None:
        await self.flush()

    def reset_cursor(self) -> None:
        """The upstream restarted its sequence: forget the old position."""
        self.mark.reset(None)
        self._saved = None

    # --- the writer ---

    async def run_writer(self) -> None:
        """Apply batches as they fill; in quiet stretches save the moving cursor every CURSOR_SAVE_SECONDS."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), CURSOR_SAVE_SECONDS)
            self._wake.clear()
            await self.flush()
            await asyncio.sleep(BATCH_WINDOW_SECONDS)

    async def flush(self) -> None:
        """Seal the open batch and apply it, with the cursor it covers, in one transaction."""
        async with self._write_lock:
            batch, self._batch = self._batch, []
            seen, self._seen = self._seen, {}
            value, value_time = self.mark.value, self.mark.value_time
            cursor = None
            if value is not None and value != self._saved:
                cursor = CursorUpdate(self.upstream, value, parse_time(value_time))
            if batch or seen or cursor is not None:
                self._writing = len(batch)
                try:
                    newer = await self._apply(batch, seen, cursor)
                finally:
                    self._writing = 0
                if cursor is not None:
                    self._saved = max(self._saved or 0, cursor.seq)
                self._after_write(batch, newer)
            self._room.set()
            self.publish()

    async def _apply(self, batch: list[WriteSet], seen: dict[str, str], cursor: CursorUpdate | None) -> dict[str, str]:
        delay = 0.25
        isolate = False
        while True:
            t0 = time.perf_counter()
            try:
                if isolate:
                    newer, failed = await self.store.apply_isolated(batch, cursor, seen)
                    for ws, exc in failed:
                        log.error("the database refused the writes of %s at seq %s: %s", ws.did, ws.seq, exc)
                else:
                    newer = await self.store.apply(batch, cursor, seen)
            except DB_DOWN as exc:
                # the database is down or restarting: hold this batch (and so the cursor) and retry
                metrics.DB_ERRORS.labels("apply").inc()
                log.warning("database write failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, DB_RETRY_MAX_DELAY)
                continue
            except asyncpg.PostgresError as exc:
                if isolate:
                    raise
                # not an outage: some write set the database refuses. Find it, keep the rest.
                metrics.DB_ERRORS.labels("apply").inc()
                log.error("database refused a batch of %d write sets (%s); applying them one by one", len(batch), exc)
                isolate = True
                continue
            metrics.DB_WRITE_SECONDS.observe(time.perf_counter() - t0)
            return newer

    def _after_write(self, batch: list[WriteSet], newer: dict[str, str]) -> None:
        for did, rev in newer.items():  # another writer (backfill) got further on these repos
            state = self.repos.get(did)
            if state is not None and (state.rev is None or state.rev < rev):
                state.rev = rev
        for ws in batch:
            for r in ws.rejections:
                log.warning("rejected %s from %s at seq %s: %s %s", r.kind, ws.did, ws.seq, r.reason, r.detail or "")
            if ws.resync_reason:
                metrics.RESYNCS_QUEUED.labels(ws.resync_reason).inc()
            if self.on_written is not None:
                self.on_written(ws)

    def publish(self) -> None:
        """Gauges of the intake, set once per write rather than once per event."""
        metrics.IN_FLIGHT.set(self.in_flight())
        metrics.TRACKED_REPOS.set(len(self.tracked))
        if self.mark.last_received is not None:
            metrics.RECEIVED_SEQ.set(self.mark.last_received)
        if self.mark.value is not None:
            metrics.CURSOR.set(self.mark.value)
            t = parse_time(self.mark.value_time)
            if t is not None:
                metrics.LAG.set(max(0.0, (self.clock() - t).total_seconds()))

    def _emit(self, seq: int, ws: WriteSet | None) -> None:
        """An event is processed: its writes join the open batch, and the mark may move past it."""
        if ws is not None and not ws.is_empty():
            ws.seq = seq
            self._remember(ws)
            self._batch.append(ws)
            self._wake.set()
        self.mark.done(seq)

    def _remember(self, ws: WriteSet) -> None:
        """Keep the in-memory repo state in step with what the open batch will write."""
        state = self.repos.get(ws.did)
        if ws.create_account or ws.upserts:
            self.tracked.add(ws.did)
            if state is None:
                state = self.repos[ws.did] = RepoState(None, None, None)
        if state is not None and ws.repo_state is not None:
            rev, state.data_cid = ws.repo_state
            state.rev = rev
            if state.seen_rev is None or state.seen_rev < rev:
                state.seen_rev = rev

    async def _run_chain(self, did: str) -> None:
        chain = self._chains[did]
        delay = 0.25
        try:
            while chain:
                ev = chain[0]
                seq: int = getattr(ev, "seq")  # noqa: B009  # only events with a seq are chained
                try:
                    ws = await self._process(ev)
                except DB_DOWN as exc:
                    # a read (repo state, DID cache) hit a database that is down or restarting:
                    # hold the event, and so the cursor, and process it again
                    metrics.DB_ERRORS.labels("read").inc()
                    log.warning("database read failed (%s); retrying seq %s in %.1fs", exc, seq, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, DB_RETRY_MAX_DELAY)
                    continue
                except Exception:  # a bug must not wedge the chain or lose the event silently
                    log.exception("internal error processing seq=%s did=%s", seq, did)
                    ws = WriteSet(did=did, rejections=[Rejection("event", "internal_error")])
                    ws.resync_reason = "internal_error"
                delay = 0.25
                chain.popleft()
                self._emit(seq, ws)
        finally:
            del self._chains[did]
            if not self._chains:
                self._idle.set()

    # --- processing ---

    def _process_now(self, ev: Event) -> WriteSet | object | None:
        """Process with what is in memory; _DEFER when the event needs I/O first."""
        if isinstance(ev, AccountEvent):
            return self._account_writes(ev)
        if isinstance(ev, MalformedEvent):
            return self._malformed_writes(ev)
        if isinstance(ev, CommitSeen):
            state = self.repos.get(ev.repo)
            return _DEFER if state is None else self._seen_writes(ev, state)
        if isinstance(ev, CommitEvent):
            state = self.repos.get(ev.repo)
            info = self.resolver.cached_did(ev.repo)
            if state is None or info is None or info.signing_key is None:
                return _DEFER  # a new account's handle is checked first; I/O
            if _stale(ev, state):
                return None
            try:
                verified = self._verify_commit(ev, key_from_did_key(info.signing_key))
            except VerificationError as exc:
                # a bad signature may be a rotated key: the chain refreshes the DID document once
                return _DEFER if exc.reason == "bad_signature" else _refused_commit(ev, exc)
            return self._commit_writes(ev, state, verified)
        return _DEFER  # #identity and #sync: rare, and they need the network

    async def _process(self, ev: Event) -> WriteSet | None:
        if isinstance(ev, CommitEvent):
            return await self._process_commit(ev)
        if isinstance(ev, CommitSeen):
            state = await self._state(ev.repo)
            return None if state is None else self._seen_writes(ev, state)
        if isinstance(ev, SyncEvent):
            return await self._process_sync(ev)
        if isinstance(ev, IdentityEvent):
            return await self._process_identity(ev)
        if isinstance(ev, AccountEvent):
            return self._account_writes(ev)
        if isinstance(ev, MalformedEvent):
            return self._malformed_writes(ev)
        raise TypeError(f"unexpected event {type(ev).__name__}")

    async def _state(self, did: str) -> RepoState | None:
        state = self.repos.get(did)
        if state is None and did in self.tracked:  # first event since start, or tracked by the backfill
            state = await self.store.repo_state(did)
            if state is not None:
                self.repos[did] = state
        return state

    async def _identity(self, did: str, *, force: bool = False) -> DidInfo | None:
        """Resolve with retries; None when the identity cannot be had now."""
        for attempt, delay in enumerate((*IDENTITY_RETRY_DELAYS, None)):
            try:
                return await self.resolver.resolve_did(did, force_refresh=force or attempt > 0)
            except ResolutionError as exc:
                if exc.reason != "unreachable" or delay is None:
                    log.warning("cannot resolve %s: %s", did, exc)
                    return None
                await asyncio.sleep(delay)
        return None

    async def _new_account_identity(self, info: DidInfo) -> IdentityUpdate:
        handle, verified = await self.resolver.verify_handle(info)
        return IdentityUpdate(handle=handle, handle_verified=verified, pds=info.pds)

    async def _process_commit(self, ev: CommitEvent) -> WriteSet:
        did = ev.repo
        state = await self._state(did)
        if _stale(ev, state):
            return WriteSet(did=did)
        info = await self._identity(did)
        if info is None:
            metrics.VERIFICATIONS.labels("commit", "identity_unavailable").inc()
            ws = WriteSet(did=did, rejections=[Rejection("commit", "identity_unavailable", f"rev {ev.rev}")])
            ws.resync_reason = "identity_unavailable"
            return ws
        try:
            verified = await self._verify_with_refresh(did, info, lambda key: self._verify_commit(ev, key))
        except VerificationError as exc:
            return _refused_commit(ev, exc)
        ws = self._commit_writes(ev, state, verified)
        if ws.create_account:
            ws.identity = await self._new_account_identity(self.resolver.cached_did(did) or info)
        return ws

    def _verify_commit(self, ev: CommitEvent, key: PublicKey) -> VerifiedCommit:
        """Verify a commit touching an indexed collection (CPU only); raises VerificationError."""
        t0 = time.perf_counter()  # not process_time: a syscall, and slow in sandboxed kernels
        try:
            return verify_commit_message(
                did=ev.repo,
                rev=ev.rev,
                commit_cid=ev.commit,
                blocks=ev.blocks,
                ops=ev.ops,
                prev_data=ev.prev_data,
                key=key,
                now=self.clock(),
            )
        finally:
            metrics.VERIFY_SECONDS.observe(time.perf_counter() - t0)

    def _commit_writes(self, ev: CommitEvent, state: RepoState | None, verified: VerifiedCommit) -> WriteSet:
        """The writes of a verified commit: its bindings, its repo state, a repair if the chain broke."""
        metrics.VERIFICATIONS.labels("commit", "ok").inc()
        ws = WriteSet(did=ev.repo)
        if state is None:
            ws.create_account = True
        else:
            ws.resync_reason = _chain_gap(state, ev.since, verified.prev_data)
        ws.repo_state = (verified.rev, verified.data_cid)
        self._plan_records(ev, verified, ws)
        return ws

    def _seen_writes(self, ev: CommitSeen, state: RepoState) -> WriteSet | None:
        """A tracked repo's commit elsewhere in the repo: follow the chain, queue a repair on a gap."""
        last = state.seen_rev or state.rev
        if last is not None and ev.rev <= last:
            return None  # a replay
        gap = last is not None and ev.since is not None and ev.since != last
        state.seen_rev = ev.rev
        self._seen[ev.repo] = ev.rev
        return WriteSet(did=ev.repo, resync_reason="missed_commit") if gap else None

    def _plan_records(self, ev: CommitEvent, verified: VerifiedCommit, ws: WriteSet) -> None:
        for op in ev.ops:
            protocol, _ = protocol_of(op.path)
            if protocol is None:
                continue
            metrics.MATCHED_OPS.labels(op.path.partition("/")[0], op.action).inc()
            if op.action == "delete":
                if op.path.endswith("/self"):
                    ws.deletes.append((protocol, ev.rev))
                continue
            cid, record = verified.writes[op.path]
            planned = plan_binding(ev.repo, ev.rev, op.path, cid, record)
            if isinstance(planned, Rejection):
                ws.rejections.append(planned)
            else:
                ws.upserts.append(planned)

    async def _process_sync(self, ev: SyncEvent) -> WriteSet:
        ws = WriteSet(did=ev.did)
        state = await self._state(ev.did)
        if state is not None and state.rev is not None and ev.rev <= state.rev:
            metrics.STALE_EVENTS.labels("sync").inc()
            return ws
        info = await self._identity(ev.did)
        if info is None:
            metrics.VERIFICATIONS.labels("sync", "identity_unavailable").inc()
            ws.rejections.append(Rejection("sync", "identity_unavailable", f"rev {ev.rev}"))
            ws.resync_reason = "identity_unavailable"
            return ws
        now = self.clock()
        try:
            verified = await self._verify_with_refresh(
                ev.did,
                info,
                lambda key: verify_sync_message(did=ev.did, rev=ev.rev, blocks=ev.blocks, key=key, now=now),
            )
        except VerificationError as exc:
            metrics.VERIFICATIONS.labels("sync", exc.reason).inc()
            ws.rejections.append(Rejection("sync", exc.reason, f"rev {ev.rev}: {exc}"))
            return ws
        metrics.VERIFICATIONS.labels("sync", "ok").inc()
        if state is None or state.data_cid != verified.data_cid:
            # the repo may now hold anything: re-fetch our records with proof
            ws.resync_reason = "sync_event"
        ws.repo_state = (verified.rev, verified.data_cid)
        return ws

    async def _verify_with_refresh(
        self, did: str, info: DidInfo, check: Callable[[PublicKey], VerifiedCommit]
    ) -> VerifiedCommit:
        """Verify with the cached key; on a signature failure refresh the DID document once."""
        if info.signing_key is None:
            raise VerificationError("no_signing_key", "no #atproto key in the DID document")
        try:
            return check(key_from_did_key(info.signing_key))
        except VerificationError as exc:
            if exc.reason != "bad_signature":
                raise
        fresh = await self._identity(did, force=True)
        if fresh is None or fresh.signing_key is None or fresh.signing_key == info.signing_key:
            raise VerificationError("bad_signature", "signature does not verify with the current key")
        return check(key_from_did_key(fresh.signing_key))

    async def _process_identity(self, ev: IdentityEvent) -> WriteSet:
        ws = WriteSet(did=ev.did)
        self.resolver.invalidate(ev.did)
        info = await self._identity(ev.did, force=True)
        if info is None:
            # keep what we had; the next #identity or a backfill re-checks
            ws.rejections.append(Rejection("identity", "identity_unavailable"))
            return ws
        ws.identity = await self._new_account_identity(info)
        return ws

    @staticmethod
    def _account_writes(ev: AccountEvent) -> WriteSet:
        status = None if ev.active else (ev.status or "deactivated")
        return WriteSet(did=ev.did, status=StatusUpdate(active=ev.active, status=status))

    @staticmethod
    def _malformed_writes(ev: MalformedEvent) -> WriteSet | None:
        metrics.FRAME_ERRORS.labels(ev.reason).inc()
        if ev.did is None:
            log.warning("malformed event at seq %s names no valid DID; skipped: %s", ev.seq, ev.message)
            return None
        # whatever it carried is lost from the stream: re-fetch the repo's records with proof
        ws = WriteSet(did=ev.did, rejections=[Rejection("event", ev.reason, ev.message[:500])])
        ws.resync_reason = "malformed_event"
        return ws


def _stale(ev: CommitEvent, state: RepoState | None) -> bool:
    """Not newer than the last verified commit: a replay, which changes nothing."""
    if state is not None and state.rev is not None and ev.rev <= state.rev:
        metrics.STALE_EVENTS.labels("commit").inc()
        return True
    return False


def _refused_commit(ev: CommitEvent, exc: VerificationError) -> WriteSet:
    metrics.VERIFICATIONS.labels("commit", exc.reason).inc()
    ws = WriteSet(did=ev.repo, rejections=[Rejection("commit", exc.reason, f"rev {ev.rev}: {exc}")])
    if exc.reason in REFETCH_AFTER:
        ws.resync_reason = "unverifiable_commit"
    return ws


def _chain_gap(state: RepoState, since: str | None, prev_data: str | None) -> str | None:
    """A commit that does not follow the last one seen means we missed something."""
    last = state.seen_rev or state.rev
    if last is not None and since is not None and since != last:
        return "missed_commit"
    # prevData can only be compared when the last commit seen is the last one verified
    seen_is_verified = state.seen_rev is None or state.seen_rev == state.rev
    if seen_is_verified and state.data_cid is not None and prev_data is not None and prev_data != state.data_cid:
        return "missed_commit"
    return None
