"""store/liveness.py: the indexer's report, on a real PostgreSQL, and its table's in-place upgrade."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from atmx.indexer.store import queries
from atmx.indexer.store.database import apply_schema
from atmx.indexer.store.liveness import Report, save_report

V2_SCHEMA = (Path(__file__).parent / "fixtures" / "schema" / "v2.sql").read_text()


async def test_an_index_of_the_previous_schema_gets_the_report_table_in_place(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        await conn.execute(V2_SCHEMA)
        await conn.execute(
            "INSERT INTO cursors (upstream, seq, event_time) VALUES ('wss://relay', 42, now() - interval '2 hours')"
        )
    assert await db_pool.fetchval("SELECT to_regclass('firehose_status')") is None
    # before any indexer of this version reports: disconnected, the lag is the cursor event's age
    await apply_schema(db_pool)
    await apply_schema(db_pool)
    before = await queries.get_health(db_pool)
    assert (before.cursor, before.state) == (42, "disconnected")
    assert before.lag_seconds is not None and before.lag_seconds > 7100
    # the indexer reports idle: lag 0 though the last event is two hours old
    await save_report(db_pool, "wss://relay", Report("idle", True, 0.0, 7200.0))
    after = await queries.get_health(db_pool)
    assert (after.cursor, after.state, after.lag_seconds) == (42, "idle", 0.0)
    assert after.idle_seconds is not None and 7199 < after.idle_seconds < 7300
    # a restart that has received nothing yet keeps the time of the last event
    await save_report(db_pool, "wss://relay", Report("idle", True, 0.0, None))
    again = await queries.get_health(db_pool)
    assert again.idle_seconds is not None and again.idle_seconds > 7199
    assert await db_pool.fetchval("SELECT seq FROM cursors") == 42
