"""The gap-repair worker: drains `resync_queue` through the backfill's proof fetch.

The pipeline queues a repo whenever the firehose cannot be trusted for it (a new account, a
gap in its commit chain, a `#sync`, a diff that does not prove its ops, an unavailable
identity, an `OutdatedCursor`); the worker fetches its records with proof and applies them.
A repair that fails is retried after 2^attempts seconds (at most an hour, in SQL). Nothing a
single repo does can stop the worker: `Backfiller.process` turns every error into an outcome,
and a repair whose result cannot even be saved (the database is away) is held back in memory
with the same exponential delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final

from atmx.indexer import metrics
from atmx.indexer.backfill.job import Backfiller
from atmx.indexer.store.backfill_store import ResyncItem
from atmx.indexer.store.errors import TRANSIENT_DB_ERRORS

__all__ = ["GapRepair"]

log = logging.getLogger(__name__)

HOLD_START: Final = 1.0
HOLD_MAX: Final = 3600.0


class GapRepair:
    def __init__(self, backfiller: Backfiller, *, poll: float = 1.0) -> None:
        self.backfiller = backfiller
        self.poll = poll
        self._wake = asyncio.Event()
        self._held: dict[str, tuple[float, int]] = {}  # did -> (not before, failures to save)

    def nudge(self) -> None:
        """Something was queued: look now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        bf = self.backfiller
        busy: set[str] = set()
        tasks: set[asyncio.Task[None]] = set()
        capacity = bf.opts.workers * 4

        async def one(item: ResyncItem) -> None:
            try:
                await bf.process(item.did, "repair", item)
                self._held.pop(item.did, None)
            except Exception as exc:  # the result could not be saved: hold the repo back, keep going
                _, failures = self._held.get(item.did, (0.0, 0))
                delay = min(HOLD_MAX, HOLD_START * 2**failures)
                self._held[item.did] = (time.monotonic() + delay, failures + 1)
                if isinstance(exc, TRANSIENT_DB_ERRORS):
                    metrics.DB_ERRORS.labels("repair").inc()
                    log.warning("gap repair of %s could not be saved (%s); retrying in %.0fs", item.did, exc, delay)
                else:
                    log.exception("gap repair of %s failed; retrying in %.0fs", item.did, delay)
            finally:
                busy.discard(item.did)

        try:
            while True:
                try:
                    room = capacity - len(busy)
                    items = await bf.store.due_resyncs(room + len(busy)) if room > 0 else []
                    metrics.RESYNC_QUEUE.set(await bf.store.resync_queue_size())
                except TRANSIENT_DB_ERRORS as exc:
                    metrics.DB_ERRORS.labels("resync_queue").inc()
                    log.warning("cannot read resync_queue: %s", exc)
                    items = []
                now = time.monotonic()
                for item in items:
                    held = self._held.get(item.did)
                    if item.did in busy or (held is not None and held[0] > now):
                        continue
                    busy.add(item.did)
                    task = asyncio.create_task(one(item))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll):
                        await self._wake.wait()
                if len(self._held) > 100_000:  # bounded: forget the oldest holds
                    for did in list(self._held)[:50_000]:
                        del self._held[did]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
