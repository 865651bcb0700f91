"""indexer/store/backfill_store.py: candidate repos, discovery cursors and the resync queue on a real
PostgreSQL. (LISTEN across a database restart is test_database_faults.py's.)"""

from __future__ import annotations

import asyncio

import asyncpg

from atmx.indexer.index.writes import WriteSet
from atmx.indexer.store.backfill_store import BackfillStore, SourceState

A, B, C = ("did:plc:" + c * 24 for c in "abc")


async def test_candidates_are_queued_once_and_worked_in_discovery_order(db_pool: asyncpg.Pool) -> None:
    store = BackfillStore(db_pool)
    assert await store.add([A, B], "relay") == 2
    assert await store.add([B, C], "pds") == 1
    todo = await store.todo(0, 10)
    assert [did for _, did in todo] == [A, B, C]
    assert [did for _, did in await store.todo(todo[0][0], 10)] == [B, C]
    assert [did for _, did in await store.todo(0, 10, only=[C])] == [C]
    assert await store.counts() == {"pending": 3}


async def test_discovery_pages_save_their_cursor(db_pool: asyncpg.Pool) -> None:
    store = BackfillStore(db_pool)
    assert await store.source("relay") is None
    assert await store.save_page("relay", [A, B], "page2", complete=False) == 2
    assert await store.save_page("relay", [B, C], None, complete=True) == 1
    assert await store.source("relay") == SourceState(None, True)
    assert await db_pool.fetchval("SELECT repos FROM backfill_sources WHERE source = 'relay'") == 3


async def test_results_and_reset(db_pool: asyncpg.Pool) -> None:
    store = BackfillStore(db_pool)
    await store.add([A, B], "relay")
    await store.record(WriteSet(did=A, create_account=True, repo_state=("3kb", "bafy")), A, "done", None)
    await store.record(None, B, "failed", "unreachable")
    assert await store.counts() == {"done": 1, "failed": 1}
    assert [did for _, did in await store.todo(0, 10)] == [B]  # a failed repo is tried again
    assert await db_pool.fetchval("SELECT rev FROM accounts WHERE did = $1", A) == "3kb"
    await store.reset(only=[A])
    assert await store.counts() == {"pending": 1, "failed": 1}
    await store.save_page("relay", [], "x", complete=False)
    await store.reset()
    assert await store.counts() == {"pending": 2} and await store.source("relay") is None


async def test_the_resync_queue(db_pool: asyncpg.Pool) -> None:
    store = BackfillStore(db_pool)
    await db_pool.execute("INSERT INTO resync_queue (did, reason) VALUES ($1, 'missed_commit')", A)
    [item] = await store.due_resyncs(10)
    assert (item.did, item.reason, item.attempts) == (A, "missed_commit", 0)
    await store.record(None, A, "failed", "unreachable", item)
    assert await store.due_resyncs(10) == []  # waits 2^1 seconds before the next try
    assert await store.resync_queue_size() == 1
    [retry] = await db_pool.fetch("SELECT attempts FROM resync_queue")
    assert retry["attempts"] == 1
    await db_pool.execute("UPDATE resync_queue SET queued_at = now() - interval '3 seconds'")
    [again] = await store.due_resyncs(10)
    await store.record(None, A, "done", None, again)
    assert await store.resync_queue_size() == 0


async def test_queue_all_and_known_rkeys(db_pool: asyncpg.Pool) -> None:
    store = BackfillStore(db_pool)
    await db_pool.execute("INSERT INTO accounts (did) VALUES ($1)", A)
    await store.add([B], "relay")
    assert await store.queue_all("schema_change") == 2
    assert {r["did"] for r in await db_pool.fetch("SELECT did FROM resync_queue")} == {A, B}
    assert await store.known_rkeys(A, "blue.catbird.chat.device") == []


async def test_new_accounts_are_announced(db_pool: asyncpg.Pool) -> None:
    store = BackfillStore(db_pool)
    seen: list[str] = []
    async with store.listen_tracked(seen.append):
        await store.record(WriteSet(did=C, create_account=True), C, "done", None)
        async with asyncio.timeout(5):
            while not seen:  # noqa: ASYNC110 - the notification arrives on another connection
                await asyncio.sleep(0.01)
    assert seen == [C]
