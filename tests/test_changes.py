"""indexer/store/changes.py: reading the change log by seq, its bounds, and retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from atmx.indexer.index.batch import Change
from atmx.indexer.store.apply import append_changes
from atmx.indexer.store.changes import LogBounds, log_bounds, prune_changes, read_changes

A, B = "did:plc:" + "a" * 24, "did:plc:" + "b" * 24


async def append(pool: asyncpg.Pool, *changes: Change) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await append_changes(conn, changes)


async def test_reading_pages_by_seq_and_filters_by_did(db_pool: asyncpg.Pool) -> None:
    assert await log_bounds(db_pool) == LogBounds(0, 0)
    binding = {"did": A, "protocol": "xmtp", "action": "create"}
    await append(
        db_pool, Change(A, "binding", binding), Change(B, "handle", {"did": B}), Change(A, "handle", {"did": A})
    )
    rows = await read_changes(db_pool, 0, 10)
    assert [(r.did, r.kind, r.protocol) for r in rows] == [
        (A, "binding", "xmtp"),
        (B, "handle", None),
        (A, "handle", None),
    ]
    first, second, third = (r.seq for r in rows)
    assert [r.seq for r in await read_changes(db_pool, first, 1)] == [second]
    assert [r.seq for r in await read_changes(db_pool, 0, 10, [A])] == [first, third]
    assert await read_changes(db_pool, 0, 10, []) == []
    assert rows[0].body.startswith("{") and '"action": "create"' in rows[0].body
    assert await log_bounds(db_pool) == LogBounds(third, 0)


async def test_retention_deletes_old_rows_and_remembers_how_far(db_pool: asyncpg.Pool) -> None:
    await append(db_pool, *(Change(A, "handle", {"did": A, "n": i}) for i in range(5)))
    seqs = [r.seq for r in await read_changes(db_pool, 0, 10)]
    await db_pool.execute("UPDATE changes SET time = now() - interval '10 days' WHERE seq <= $1", seqs[2])
    assert await prune_changes(db_pool, datetime.now(UTC) - timedelta(days=7), batch=2) == 3
    assert [r.seq for r in await read_changes(db_pool, 0, 10)] == seqs[3:]
    assert await log_bounds(db_pool) == LogBounds(seqs[-1], seqs[2])
    assert await prune_changes(db_pool, datetime.now(UTC) - timedelta(days=7)) == 0


async def test_the_head_survives_pruning_everything(db_pool: asyncpg.Pool) -> None:
    await append(db_pool, Change(A, "handle", {"did": A}))
    head = (await log_bounds(db_pool)).newest
    assert await prune_changes(db_pool, datetime.now(UTC) + timedelta(days=1)) == 1
    assert await log_bounds(db_pool) == LogBounds(head, head)  # an empty log still knows its head
