"""indexer/backfill/repair.py: the gap-repair worker drains the resync queue and survives what goes
wrong. The backfiller is a stand-in; repairs over a real database are test_job.py's."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from metric_samples import sample

from atmx.indexer.backfill.repair import GapRepair
from atmx.indexer.store.backfill_store import ResyncItem


def item(did: str) -> ResyncItem:
    return ResyncItem(did, "missed_commit", datetime.now(UTC), 0)


@dataclass
class FakeStore:
    queue: list[ResyncItem] = field(default_factory=list)
    down: bool = False

    async def due_resyncs(self, limit: int) -> list[ResyncItem]:
        if self.down:
            raise ConnectionRefusedError("database away")
        return self.queue[:limit]

    async def resync_queue_size(self) -> int:
        return len(self.queue)


@dataclass
class Opts:
    workers: int = 2


class FakeBackfiller:
    def __init__(self) -> None:
        self.store = FakeStore()
        self.opts = Opts()
        self.processed: list[str] = []
        self.fail: dict[str, BaseException] = {}

    async def process(self, did: str, source: str, queued: ResyncItem) -> None:
        assert source == "repair"
        self.processed.append(did)
        if did in self.fail:
            raise self.fail[did]
        self.store.queue = [i for i in self.store.queue if i.did != did]


@contextlib.asynccontextmanager
async def running(repair: GapRepair) -> AsyncIterator[None]:
    task = asyncio.create_task(repair.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until(check: Any, within: float = 2.0) -> None:
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - polls a stand-in that has no event to wait on
            await asyncio.sleep(0.01)


async def test_queued_repos_are_repaired_and_a_nudge_wakes_the_worker() -> None:
    bf = FakeBackfiller()
    repair = GapRepair(bf, poll=30.0)  # type: ignore[arg-type]
    async with running(repair):
        bf.store.queue = [item("did:plc:a"), item("did:plc:b")]
        repair.nudge()  # without it the worker would look again in 30 s
        await until(lambda: sorted(bf.processed) == ["did:plc:a", "did:plc:b"])
    assert bf.store.queue == []


async def test_a_repair_that_cannot_be_saved_is_held_back() -> None:
    bf = FakeBackfiller()
    bf.fail["did:plc:a"] = ConnectionResetError("database went away")
    bf.store.queue = [item("did:plc:a")]
    before = sample("atmx_db_errors_total", op="repair")
    async with running(GapRepair(bf, poll=0.01)):  # type: ignore[arg-type]
        await until(lambda: bf.processed == ["did:plc:a"])
        await asyncio.sleep(0.2)  # twenty polls: held back for a second, not tried again
        assert bf.processed == ["did:plc:a"]
    assert sample("atmx_db_errors_total", op="repair") == before + 1


async def test_an_unreadable_queue_is_counted_and_the_worker_goes_on() -> None:
    bf = FakeBackfiller()
    bf.store.down = True
    before = sample("atmx_db_errors_total", op="resync_queue")
    async with running(GapRepair(bf, poll=0.01)):  # type: ignore[arg-type]
        await until(lambda: sample("atmx_db_errors_total", op="resync_queue") >= before + 2)
        bf.store.down = False
        bf.store.queue = [item("did:plc:c")]
        await until(lambda: bf.processed == ["did:plc:c"])
