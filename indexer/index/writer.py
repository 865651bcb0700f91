"""The batched writer: processed events go into the open batch, and one transaction applies a
batch together with the cursor that covers it.

The cursor saved with a batch is the low-water mark (firehose/watermark.py) as it stood when
the batch was sealed: every event at or below it is in this batch or an earlier one, or needed
no write. A crash at any moment therefore resumes at or before the first event whose write was
lost. While one batch commits the next one fills, so batches grow with the load and a quiet
stream is written event by event.

A database outage holds the batch (and so the cursor) and retries it with backoff; a batch the
database refuses (not an outage: some statement of one write set) is applied again one write
set at a time, so the refused one is recorded and repaired and the others still apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Final

import asyncpg

from atmx.indexer import metrics
from atmx.indexer.firehose.watermark import Watermark
from atmx.indexer.index.writes import CursorUpdate, WriteSet
from atmx.indexer.store.errors import TRANSIENT_DB_ERRORS
from atmx.indexer.store.index_store import Store

__all__ = ["BatchWriter", "parse_time"]

log = logging.getLogger(__name__)

DB_RETRY_MAX_DELAY: Final = 10.0
# how often the cursor of a stretch with nothing to write is saved
CURSOR_SAVE_SECONDS: Final = 0.1
# after a write, let the next batch fill this long: under load one transaction per window, not
# one per event; a quiet stream's first write still goes out at once
BATCH_WINDOW_SECONDS: Final = 0.025


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


class BatchWriter:
    def __init__(
        self,
        store: Store,
        mark: Watermark,
        *,
        upstream: str,
        start_cursor: int | None,
        on_applied: Callable[[list[WriteSet], dict[str, str]], None],
    ) -> None:
        self.store = store
        self.mark = mark
        self.upstream = upstream
        self.on_applied = on_applied  # (batch, repos another writer got further on)
        self.batch: list[WriteSet] = []  # processed, waiting for the next transaction
        self.writing = 0  # write sets in the transaction under way
        self.saved: int | None = start_cursor
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.room = asyncio.Event()  # set after every write: the intake may have room again
        self.room.set()

    def add(self, ws: WriteSet) -> None:
        self.batch.append(ws)
        self._wake.set()

    def pending(self) -> int:
        return len(self.batch) + self.writing

    async def run(self) -> None:
        """Apply batches as they fill; in quiet stretches save the moving cursor every CURSOR_SAVE_SECONDS."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CURSOR_SAVE_SECONDS):
                    await self._wake.wait()
            self._wake.clear()
            await self.flush()
            await asyncio.sleep(BATCH_WINDOW_SECONDS)

    async def flush(self) -> None:
        """Seal the open batch and apply it, with the cursor it covers, in one transaction."""
        async with self._lock:
            batch, self.batch = self.batch, []
            value, value_time = self.mark.value, self.mark.value_time
            cursor = None
            if value is not None and value != self.saved:
                cursor = CursorUpdate(self.upstream, value, parse_time(value_time))
            if batch or cursor is not None:
                self.writing = len(batch)
                try:
                    newer = await self._apply(batch, cursor)
                finally:
                    self.writing = 0
                if cursor is not None:
                    self.saved = max(self.saved or 0, cursor.seq)
                self.on_applied(batch, newer)
            self.room.set()

    async def _apply(self, batch: list[WriteSet], cursor: CursorUpdate | None) -> dict[str, str]:
        delay = 0.25
        isolate = False
        while True:
            t0 = time.perf_counter()
            try:
                if isolate:
                    newer, failed = await self.store.apply_isolated(batch, cursor)
                    for ws, exc in failed:
                        log.error("the database refused the writes of %s at seq %s: %s", ws.did, ws.seq, exc)
                else:
                    newer = await self.store.apply(batch, cursor)
            except TRANSIENT_DB_ERRORS as exc:
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
