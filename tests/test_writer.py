"""indexer/index/writer.py: batches applied with the cursor that covers them, outages waited out,
refused batches split. The store is a stand-in here; the real one is test_index_store.py's."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from metric_samples import sample

from atmx.indexer.firehose.watermark import Watermark
from atmx.indexer.index import writer as writer_mod
from atmx.indexer.index.writer import BatchWriter, parse_time
from atmx.indexer.index.writes import CursorUpdate, WriteSet

UPSTREAM = "wss://relay.test"


class FakeStore:
    def __init__(self, failures: list[BaseException] | None = None) -> None:
        self.failures = list(failures or [])
        self.applied: list[tuple[list[str], CursorUpdate | None]] = []
        self.isolated: list[list[str]] = []

    async def apply(self, writes: list[WriteSet], cursor: CursorUpdate | None) -> dict[str, str]:
        if self.failures:
            raise self.failures.pop(0)
        self.applied.append(([ws.did for ws in writes], cursor))
        return {"did:plc:ahead": "3kzzz"} if any(ws.did == "did:plc:ahead" for ws in writes) else {}

    async def apply_isolated(
        self, writes: list[WriteSet], cursor: CursorUpdate | None
    ) -> tuple[dict[str, str], list[tuple[WriteSet, Exception]]]:
        self.isolated.append([ws.did for ws in writes])
        return {}, [(writes[0], asyncpg.DataError("refused"))]


def make(store: FakeStore, mark: Watermark, calls: list[Any], start: int | None = None) -> BatchWriter:
    def on_applied(batch: list[WriteSet], newer: dict[str, str]) -> None:
        calls.append(([ws.did for ws in batch], newer))

    return BatchWriter(store, mark, upstream=UPSTREAM, start_cursor=start, on_applied=on_applied)  # type: ignore[arg-type]


def test_parse_time() -> None:
    assert parse_time("2026-11-01T00:00:00.000Z") == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_time(None) is None and parse_time("") is None and parse_time("soon") is None


async def test_nothing_to_write_writes_nothing() -> None:
    store, calls = FakeStore(), []
    writer = make(store, Watermark(10), calls, start=10)
    await writer.flush()
    assert store.applied == [] and calls == [] and writer.room.is_set()


async def test_a_batch_goes_with_the_cursor_it_covers() -> None:
    store, mark, calls = FakeStore(), Watermark(), []
    writer = make(store, mark, calls)
    for seq, did in ((1, "did:plc:a"), (2, "did:plc:ahead")):
        mark.received(seq, "2026-11-01T00:00:00.000Z")
        writer.add(WriteSet(did=did, seq=seq))
        mark.done(seq)
    mark.received(3, None)  # in flight: the cursor may not pass it
    assert writer.pending() == 2
    await writer.flush()
    assert store.applied == [
        (["did:plc:a", "did:plc:ahead"], CursorUpdate(UPSTREAM, 2, datetime(2026, 11, 1, tzinfo=UTC)))
    ]
    assert calls == [(["did:plc:a", "did:plc:ahead"], {"did:plc:ahead": "3kzzz"})]
    assert writer.saved == 2 and writer.pending() == 0
    await writer.flush()  # the cursor has not moved: nothing more to save
    assert len(store.applied) == 1


async def test_a_moving_cursor_is_saved_without_writes() -> None:
    store, mark, calls = FakeStore(), Watermark(5), []
    writer = make(store, mark, calls, start=5)
    mark.skip(6, None)
    await writer.flush()
    assert store.applied == [([], CursorUpdate(UPSTREAM, 6, None))]


async def test_an_outage_holds_the_batch_and_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_mod, "DB_RETRY_MAX_DELAY", 0.01)
    store, mark, calls = (
        FakeStore([ConnectionRefusedError(), asyncpg.TooManyConnectionsError("too many clients")]),
        Watermark(),
        [],
    )
    writer = make(store, mark, calls)
    writer.add(WriteSet(did="did:plc:a", seq=1))
    before = sample("atmx_db_errors_total", op="apply")
    await writer.flush()
    assert [dids for dids, _ in store.applied] == [["did:plc:a"]]
    assert sample("atmx_db_errors_total", op="apply") == before + 2


async def test_a_refused_batch_is_applied_one_write_set_at_a_time() -> None:
    store, mark, calls = FakeStore([asyncpg.UniqueViolationError("no")]), Watermark(), []
    writer = make(store, mark, calls)
    writer.add(WriteSet(did="did:plc:a", seq=1))
    writer.add(WriteSet(did="did:plc:b", seq=2))
    await writer.flush()
    assert store.isolated == [["did:plc:a", "did:plc:b"]] and store.applied == []
    assert calls == [(["did:plc:a", "did:plc:b"], {})]
