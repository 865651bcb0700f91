"""The pipeline: events in seq order -> decisions (process.py) -> the batched writer, per-DID ordered.

The stream hands every decoded event to `offer`, in seq order, synchronously. An event about
nothing atmx indexes only moves the cursor. An event atmx needs is decided on the spot when
all its inputs are in memory (the repo's state, a fresh DID document): verification is CPU
work, so on a warm index that is nearly always the case. When it needs I/O (a DID document
or a repo state to load, a rotated key to fetch, a handle to check) it goes into a chain of
its DID, run by a task; every later event of that DID queues behind it, so each repo's events
apply strictly in order while other DIDs go on.

Whatever happens while processing one event, the event ends processed: an unexpected error
is recorded as `internal_error` with its repo queued for a proof re-fetch, so one bad event
can never stop the cursor or leave its seq pending in memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from atmx.indexer import metrics
from atmx.indexer.firehose.frames import (
    CommitEvent,
    ErrorEvent,
    Event,
    InfoEvent,
    MalformedEvent,
    SkippedEvent,
    UnknownEvent,
    event_did,
)
from atmx.indexer.firehose.watermark import Watermark
from atmx.indexer.identity.resolver import IdentityResolver
from atmx.indexer.index.decide import RepoState
from atmx.indexer.index.lag import Lag
from atmx.indexer.index.process import DEFER, EventProcessor
from atmx.indexer.index.writer import BatchWriter
from atmx.indexer.index.writes import WriteSet
from atmx.indexer.records.registry import COLLECTION_PREFIXES
from atmx.indexer.store.errors import TRANSIENT_DB_ERRORS
from atmx.indexer.store.index_store import Store

__all__ = ["Pipeline"]

log = logging.getLogger(__name__)

DB_RETRY_MAX_DELAY: Final = 10.0


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
        self.writer = BatchWriter(
            store, self.mark, upstream=upstream, start_cursor=start_cursor, on_applied=self._after_write
        )
        self.processor = EventProcessor(store, resolver, tracked=self.tracked, repos=self.repos, clock=clock)
        self._chains: dict[str, deque[Event]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        # called after each applied write set (e.g. to wake the XMTP stage or the gap repair)
        self.on_written: Callable[[WriteSet], None] | None = None
        self.lag = Lag(start_cursor, clock)

    async def load(self) -> None:
        # only the DIDs: a repo's state is read on its first event (_state), so memory follows
        # the repos that are active, and a restart over millions of accounts starts at once
        # in place: the processor and the backfill job hold these very collections
        self.tracked.clear()
        self.tracked.update(await self.store.tracked_dids())
        self.repos.clear()
        metrics.TRACKED_REPOS.set(len(self.tracked))

    # --- intake (called by the stream loop, in seq order) ---

    def wants(self, did: str) -> bool:
        """Whether events of `did` matter beyond their seq (the pre-filter asks this)."""
        # a DID whose first indexed commit is still in flight is not tracked yet, but its later
        # events (another commit, #account, #identity) must not be dropped because of that
        return did in self.tracked or did in self._chains

    def offer(self, ev: Event) -> bool:
        """Take one decoded event; True when the caller must stop handing more until `wait_room()`.

        Never blocks and never raises for an event's sake. Events that only move the cursor cannot
        fill the pipeline, so they return False without looking (nearly every firehose event).
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
        seq = ev.seq
        time_ = None if isinstance(ev, MalformedEvent) else ev.time
        did = event_did(ev)
        if did is None:  # a malformed event naming no valid DID: count it and move on
            if isinstance(ev, MalformedEvent):
                metrics.FRAME_ERRORS.labels(ev.reason).inc()
                log.warning("malformed event at seq %s names no valid DID; skipped: %s", ev.seq, ev.message)
            self.mark.skip(seq, None)
            return False
        if not self.wants(did) and not (isinstance(ev, MalformedEvent) or _names_indexed_collection(ev)):
            self.mark.skip(seq, time_)  # the pre-filter already drops these; a guard for other callers
            return False
        self.mark.received(seq, time_)
        chain = self._chains.get(did)
        if chain is not None:
            chain.append(ev)
            return self.busy()
        try:
            outcome = self.processor.decide_now(ev)
        except Exception as exc:  # a bug must not stop the cursor: record it, repair the repo
            outcome = self.processor.internal_error(did, seq, exc)
        if outcome is DEFER:
            self._chains[did] = deque((ev,))
            self._idle.clear()
            task = asyncio.create_task(self._run_chain(did))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._emit(seq, outcome)  # type: ignore[arg-type]
        return self.busy()

    def in_flight(self) -> int:
        """Events received and not yet written (the back-pressure measure)."""
        return len(self.mark) + self.writer.pending()

    def busy(self) -> bool:
        return self.in_flight() >= self.max_in_flight

    async def wait_room(self) -> None:
        """Return once `busy()` is over."""
        while self.busy():
            self.writer.room.clear()
            await self.writer.room.wait()

    async def drain(self) -> None:
        """Wait until everything offered is processed and written, with the cursor."""
        await self._idle.wait()
        await self.flush()

    async def flush(self) -> None:
        await self.writer.flush()
        self.publish()

    async def flush_cursor(self) -> None:
        await self.flush()

    def reset_cursor(self) -> None:
        """The upstream restarted its sequence: forget the old position."""
        self.mark.reset(None)
        self.writer.saved = None

    async def run_writer(self) -> None:
        await self.writer.run()

    def publish(self) -> None:
        """Gauges of the intake, set once per write rather than once per event."""
        metrics.IN_FLIGHT.set(self.in_flight())
        metrics.TRACKED_REPOS.set(len(self.tracked))
        if self.mark.last_received is not None:
            metrics.RECEIVED_SEQ.set(self.mark.last_received)
        if self.mark.value is not None:
            metrics.CURSOR.set(self.mark.value)
        self.lag_seconds()  # note how late the cursor's event is as the cursor moves; liveness.py exports it

    def lag_seconds(self) -> float:
        """The delay of events received but not yet processed (lag.py), for metrics and liveness."""
        return self.lag.observe(self.mark.value, self.mark.value_time, self.in_flight())

    # --- after a write ---

    def _after_write(self, batch: list[WriteSet], newer: dict[str, str]) -> None:
        for did, rev in newer.items():  # another writer (backfill) got further on these repos
            state = self.repos.get(did)
            if state is not None and (state.rev is None or state.rev < rev):
                self.repos.pop(did)  # read again on its next event: the data CID changed too
        for ws in batch:
            for r in ws.rejections:
                log.warning("rejected %s from %s at seq %s: %s %s", r.kind, ws.did, ws.seq, r.reason, r.detail or "")
            if ws.resync_reason:
                metrics.RESYNCS_QUEUED.labels(ws.resync_reason).inc()
            if self.on_written is not None:
                self.on_written(ws)
        self.publish()

    def stored_elsewhere(self, ws: WriteSet) -> None:
        """A proof fetch (gap repair, backfill) has stored `ws`: move the cached repo state forward
        as the store did. Left behind, it would make the account's next honest commit, which
        chains onto the repaired state, look like a gap and queue a needless second repair."""
        state = self.repos.get(ws.did)
        if state is None or ws.repo_state is None:
            return  # not cached: read from the store on the account's next event
        rev, data_cid = ws.repo_state
        if state.rev is None or state.rev < rev:
            state.rev, state.data_cid = rev, data_cid

    # --- processing ---

    def _emit(self, seq: int, ws: WriteSet | None) -> None:
        """An event is processed: its writes join the open batch, and the mark may move past it."""
        if ws is not None and not ws.is_empty():
            ws.seq = seq
            self._remember(ws)
            self.writer.add(ws)
        self.mark.done(seq)

    def _remember(self, ws: WriteSet) -> None:
        """Keep the in-memory repo state in step with what the open batch will write."""
        if ws.create_account or ws.upserts:
            self.tracked.add(ws.did)
        if ws.repo_state is not None:
            state = self.repos.get(ws.did)
            if state is None:
                if ws.did not in self.tracked:
                    return
                state = self.repos[ws.did] = RepoState(None, None)
            rev, data_cid = ws.repo_state
            if state.rev is None or state.rev < rev:
                state.rev, state.data_cid = rev, data_cid

    async def _run_chain(self, did: str) -> None:
        chain = self._chains[did]
        delay = 0.25
        try:
            while chain:
                ev = chain[0]
                seq: int = getattr(ev, "seq")  # noqa: B009  # only events with a seq are chained
                try:
                    ws = await self.processor.process(ev)
                except TRANSIENT_DB_ERRORS as exc:
                    # a read (repo state, DID cache) hit a database that is down or restarting:
                    # hold the event, and so the cursor, and process it again
                    metrics.DB_ERRORS.labels("read").inc()
                    log.warning("database read failed (%s); retrying seq %s in %.1fs", exc, seq, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, DB_RETRY_MAX_DELAY)
                    continue
                except Exception as exc:  # a bug must not wedge the chain or lose the event silently
                    ws = self.processor.internal_error(did, seq, exc)
                delay = 0.25
                chain.popleft()
                self._emit(seq, ws)
        finally:
            del self._chains[did]
            if not self._chains:
                self._idle.set()


def _names_indexed_collection(ev: Event) -> bool:
    return isinstance(ev, CommitEvent) and any(op.path.startswith(COLLECTION_PREFIXES) for op in ev.ops)
