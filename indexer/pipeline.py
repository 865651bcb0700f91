"""filter -> verify -> store, with per-DID ordering and a cursor that never skips work.

Events for one DID are processed strictly in arrival order; different DIDs run
concurrently. The cursor saved with each write is the low-water mark (watermark.py), so a
crash at any moment resumes at or before the first unprocessed event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from . import metrics
from .bindings import plan_binding, protocol_of
from .crypto import PublicKey, key_from_did_key
from .diddoc import DidInfo
from .frames import (
    AccountEvent,
    CommitEvent,
    Event,
    IdentityEvent,
    SyncEvent,
    event_did,
    touches_collections,
)
from .identity import IdentityResolver, ResolutionError
from .store import AccountState, Store
from .verify import VerificationError, VerifiedCommit, verify_commit_message, verify_sync_message
from .watermark import Watermark
from .writes import CursorUpdate, IdentityUpdate, Rejection, StatusUpdate, WriteSet

log = logging.getLogger(__name__)

IDENTITY_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
DB_RETRY_MAX_DELAY = 10.0
# connection-level failures only: a query error is a bug, not an outage, and must not be retried forever
DB_DOWN = (
    TimeoutError,
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    # the pool's reset of a connection the server just closed can end in a protocol-state error
    asyncpg.InternalClientError,
)


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass
class PipelineStats:
    processed: int = 0
    rejected: int = 0


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
        self.tracked: set[str] = set()
        self.mark = Watermark(start_cursor)
        self.stats = PipelineStats()
        self._chains: dict[str, list[tuple[int, Event]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._saved: int | None = start_cursor
        self._idle = asyncio.Event()
        self._idle.set()
        # called after each applied write (e.g. to wake the XMTP stage for new bindings)
        self.on_written: Callable[[WriteSet], None] | None = None

    async def load(self) -> None:
        self.tracked = await self.store.tracked_dids()
        metrics.TRACKED_REPOS.set(len(self.tracked))

    # --- intake (called by the stream loop, in seq order) ---

    async def submit(self, seq: int | None, ev: Event) -> None:
        """Take one decoded event. Returns once it is queued; blocks when too much is in flight."""
        if seq is None:  # #info and unknown events carry no seq
            return
        self.mark.received(seq, getattr(ev, "time", None))
        metrics.RECEIVED_SEQ.set(seq)
        if not self._wanted(ev):
            self._finish(seq)
            return
        await self._slots.acquire()
        did = event_did(ev)
        assert did is not None
        chain = self._chains.get(did)
        if chain is not None:
            chain.append((seq, ev))
            return
        self._chains[did] = [(seq, ev)]
        self._idle.clear()
        task = asyncio.create_task(self._run_chain(did))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _wanted(self, ev: Event) -> bool:
        # A DID whose first indexed commit is still in flight is not tracked yet; its later events
        # (an unrelated commit, #account, #identity) must not be dropped because of that race.
        if isinstance(ev, CommitEvent):
            return ev.repo in self.tracked or ev.repo in self._chains or touches_collections(ev)
        if isinstance(ev, (SyncEvent, IdentityEvent, AccountEvent)):
            return ev.did in self.tracked or ev.did in self._chains
        return False

    async def drain(self) -> None:
        """Wait until everything submitted is processed."""
        await self._idle.wait()

    async def flush_cursor(self) -> None:
        """Persist the low-water mark if it moved (covers stretches of irrelevant events)."""
        value = self.mark.value
        if value is None or value == self._saved:
            return
        await self.store.save_cursor(CursorUpdate(self.upstream, value, parse_time(self.mark.value_time)))
        self._saved = value

    def _finish(self, seq: int) -> None:
        self.mark.done(seq)
        self.stats.processed += 1
        metrics.IN_FLIGHT.set(len(self.mark))
        if self.mark.value is not None:
            metrics.CURSOR.set(self.mark.value)
            t = parse_time(self.mark.value_time)
            if t is not None:
                metrics.LAG.set(max(0.0, (self.clock() - t).total_seconds()))

    async def _run_chain(self, did: str) -> None:
        chain = self._chains[did]
        delay = 0.25
        try:
            while chain:
                seq, ev = chain[0]
                try:
                    writes = await self._process(ev)
                except DB_DOWN as exc:
                    # a read (account state, DID cache) hit a database that is down or restarting:
                    # hold the event, and so the cursor, and process it again
                    metrics.DB_ERRORS.labels("read").inc()
                    log.warning("database read failed (%s); retrying seq %s in %.1fs", exc, seq, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, DB_RETRY_MAX_DELAY)
                    continue
                except Exception:  # a bug must not wedge the chain or lose the event silently
                    log.exception("internal error processing seq=%s did=%s", seq, did)
                    writes = WriteSet(did=did, seq=seq, rejections=[Rejection("event", "internal_error")])
                    writes.resync_reason = "internal_error"
                delay = 0.25
                writes.seq = seq
                await self._commit(seq, writes)
                chain.pop(0)
                self._finish(seq)
                self._slots.release()
        finally:
            del self._chains[did]
            if not self._chains:
                self._idle.set()

    async def _commit(self, seq: int, writes: WriteSet) -> None:
        value, value_time = self.mark.value_if_done(seq)
        cursor = CursorUpdate(self.upstream, value, parse_time(value_time)) if value is not None else None
        delay = 0.25
        while True:
            t0 = time.perf_counter()
            try:
                await self.store.apply([writes] if not writes.is_empty() else [], cursor)
            except (*DB_DOWN, asyncpg.PostgresError) as exc:
                # The database is down or restarting: hold this event (and so the cursor) and retry.
                metrics.DB_ERRORS.labels("apply").inc()
                log.warning("database write failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, DB_RETRY_MAX_DELAY)
                continue
            metrics.DB_WRITE_SECONDS.observe(time.perf_counter() - t0)
            break
        if cursor is not None:
            self._saved = max(self._saved or 0, cursor.seq)
        if writes.create_account or writes.upserts:
            self.tracked.add(writes.did)
            metrics.TRACKED_REPOS.set(len(self.tracked))
        for r in writes.rejections:
            self.stats.rejected += 1
            log.warning("rejected %s from %s at seq %s: %s %s", r.kind, writes.did, seq, r.reason, r.detail or "")
        if writes.resync_reason:
            metrics.RESYNCS_QUEUED.labels(writes.resync_reason).inc()
        if self.on_written is not None and not writes.is_empty():
            self.on_written(writes)

    # --- processing (one event, its DID's chain held) ---

    async def _process(self, ev: Event) -> WriteSet:
        if isinstance(ev, CommitEvent):
            return await self._process_commit(ev)
        if isinstance(ev, SyncEvent):
            return await self._process_sync(ev)
        if isinstance(ev, IdentityEvent):
            return await self._process_identity(ev)
        if isinstance(ev, AccountEvent):
            return self._process_account(ev)
        raise TypeError(f"unexpected event {type(ev).__name__}")

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

    async def _verify(self, did: str, info: DidInfo, check: Callable[[PublicKey], VerifiedCommit]) -> VerifiedCommit:
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

    async def _new_account_identity(self, did: str, info: DidInfo) -> IdentityUpdate:
        handle, verified = await self.resolver.verify_handle(info)
        return IdentityUpdate(handle=handle, handle_verified=verified, pds=info.pds)

    async def _process_commit(self, ev: CommitEvent) -> WriteSet:
        did = ev.repo
        ws = WriteSet(did=did)
        account = await self.store.account(did) if did in self.tracked else None
        if account is not None and account.rev is not None and ev.rev <= account.rev:
            metrics.STALE_EVENTS.labels("commit").inc()
            return ws
        info = await self._identity(did)
        if info is None:
            metrics.VERIFICATIONS.labels("commit", "identity_unavailable").inc()
            ws.rejections.append(Rejection("commit", "identity_unavailable", f"rev {ev.rev}"))
            ws.resync_reason = "identity_unavailable"
            return ws
        now = self.clock()
        t0 = time.process_time()
        try:
            verified = await self._verify(
                did,
                info,
                lambda key: verify_commit_message(
                    did=did,
                    rev=ev.rev,
                    commit_cid=ev.commit,
                    blocks=ev.blocks,
                    ops=ev.ops,
                    prev_data=ev.prev_data,
                    key=key,
                    now=now,
                ),
            )
        except VerificationError as exc:
            metrics.VERIFICATIONS.labels("commit", exc.reason).inc()
            ws.rejections.append(Rejection("commit", exc.reason, f"rev {ev.rev}: {exc}"))
            return ws
        finally:
            metrics.VERIFY_SECONDS.observe(time.process_time() - t0)
        metrics.VERIFICATIONS.labels("commit", "ok").inc()
        if account is None:
            ws.create_account = True
            ws.identity = await self._new_account_identity(did, info)
        else:
            gap = self._chain_gap(account, ev, verified)
            if gap:
                ws.resync_reason = gap
        ws.repo_state = (verified.rev, verified.data_cid)
        self._plan_records(ev, verified, ws)
        return ws

    @staticmethod
    def _chain_gap(account: AccountState, ev: CommitEvent, verified: VerifiedCommit) -> str | None:
        """A commit that does not follow the last one we verified means we missed something."""
        if account.rev is not None and ev.since is not None and ev.since != account.rev:
            return "missed_commit"
        if account.data_cid is not None and verified.prev_data is not None:
            if verified.prev_data != account.data_cid:
                return "missed_commit"
        return None

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
        account = await self.store.account(ev.did)
        if account is not None and account.rev is not None and ev.rev <= account.rev:
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
            verified = await self._verify(
                ev.did,
                info,
                lambda key: verify_sync_message(did=ev.did, rev=ev.rev, blocks=ev.blocks, key=key, now=now),
            )
        except VerificationError as exc:
            metrics.VERIFICATIONS.labels("sync", exc.reason).inc()
            ws.rejections.append(Rejection("sync", exc.reason, f"rev {ev.rev}: {exc}"))
            return ws
        metrics.VERIFICATIONS.labels("sync", "ok").inc()
        if account is None or account.data_cid != verified.data_cid:
            # the repo may now hold anything: re-fetch our records with proof
            ws.resync_reason = "sync_event"
        ws.repo_state = (verified.rev, verified.data_cid)
        return ws

    async def _process_identity(self, ev: IdentityEvent) -> WriteSet:
        ws = WriteSet(did=ev.did)
        self.resolver.invalidate(ev.did)
        info = await self._identity(ev.did, force=True)
        if info is None:
            # keep what we had; the next #identity or a backfill re-checks
            ws.rejections.append(Rejection("identity", "identity_unavailable"))
            return ws
        ws.identity = await self._new_account_identity(ev.did, info)
        return ws

    def _process_account(self, ev: AccountEvent) -> WriteSet:
        status = None if ev.active else (ev.status or "deactivated")
        return WriteSet(did=ev.did, status=StatusUpdate(active=ev.active, status=status))
