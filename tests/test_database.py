from __future__ import annotations

import asyncpg

from atmx.indexer.store.database import apply_schema, schema_sql


def test_schema_is_packaged() -> None:
    assert "CREATE TABLE IF NOT EXISTS bindings" in schema_sql()


async def test_schema_applies_twice(db_pool: asyncpg.Pool) -> None:
    await apply_schema(db_pool)  # the fixture applied it once already
    tables = {
        r["tablename"] for r in await db_pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert {"accounts", "bindings", "did_cache", "cursors", "rejections"} <= tables
    assert await db_pool.fetchval("SELECT value FROM schema_meta WHERE key = 'version'") == "1"
