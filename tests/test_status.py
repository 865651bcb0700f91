"""indexer/store/status.py: what `atmx status`, `_health` and the status page report."""

from __future__ import annotations

import asyncpg

from atmx.indexer.store.status import backfill_status, index_status


async def test_an_empty_index(db_pool: asyncpg.Pool) -> None:
    status = await index_status(db_pool)
    assert status == {
        "cursors": [],
        "accounts": {},
        "bindings": {},
        "backfill": {
            "repos": 0,
            "done": 0,
            "pending": 0,
            "failed": 0,
            "skipped": 0,
            "complete": False,
            "sources": 0,
            "sourcesComplete": 0,
            "resyncQueue": 0,
        },
    }


async def test_counts_cursor_and_lag(db_pool: asyncpg.Pool) -> None:
    await db_pool.execute(
        "INSERT INTO accounts (did, active, status) VALUES ('did:plc:a', true, NULL),"
        " ('did:plc:b', false, 'takendown'), ('did:plc:c', false, NULL)"
    )
    await db_pool.execute(
        "INSERT INTO cursors (upstream, seq, event_time) VALUES ('wss://r.test', 42, now() - interval '30 seconds')"
    )
    status = await index_status(db_pool)
    assert status["accounts"] == {"active": 1, "takendown": 1, "inactive": 1}
    [cursor] = status["cursors"]
    assert cursor["upstream"] == "wss://r.test" and cursor["seq"] == 42 and 29 <= cursor["lagSeconds"] < 90


async def test_backfill_is_complete_when_every_repo_and_source_is_finished(db_pool: asyncpg.Pool) -> None:
    await db_pool.execute(
        "INSERT INTO backfill_repos (did, source, state)"
        " VALUES ('did:plc:a', 's', 'done'), ('did:plc:b', 's', 'skipped')"
    )
    await db_pool.execute("INSERT INTO backfill_sources (source, complete) VALUES ('s', false)")
    assert (await backfill_status(db_pool))["complete"] is False  # the source may list more repos
    await db_pool.execute("UPDATE backfill_sources SET complete = true")
    status = await backfill_status(db_pool)
    assert status["complete"] is True and (status["done"], status["skipped"], status["repos"]) == (1, 1, 2)
    await db_pool.execute("INSERT INTO backfill_repos (did, source, state) VALUES ('did:plc:c', 's', 'pending')")
    assert (await backfill_status(db_pool))["complete"] is False
