"""store/database.py: the schema applies to an empty database, again over itself, and upgrades an
index built by the previous version in place, with its data (no re-index, no manual step)."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from atmx.indexer.store.database import apply_schema, schema_sql

V1_SCHEMA = (Path(__file__).parent / "fixtures" / "schema" / "v1.sql").read_text()
DID = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"


def test_schema_is_packaged() -> None:
    assert "CREATE TABLE IF NOT EXISTS bindings" in schema_sql()


async def test_schema_applies_twice(db_pool: asyncpg.Pool) -> None:
    await apply_schema(db_pool)  # the fixture applied it once already
    tables = {
        r["tablename"] for r in await db_pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert {"accounts", "bindings", "binding_proofs", "binding_history", "changes", "rejections"} <= tables
    assert await db_pool.fetchval("SELECT value FROM schema_meta WHERE key = 'version'") == "2"


async def test_an_index_of_the_previous_version_is_upgraded_in_place(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        await conn.execute(V1_SCHEMA)
        await conn.execute(
            "INSERT INTO accounts (did, handle, handle_verified, rev) VALUES ($1, 'a.test', true, 'r1')", DID
        )
        await conn.execute(
            """INSERT INTO bindings (did, protocol, uri, cid, rev, record, status, xmtp_inbox_id, xmtp_env, verified_at)
               VALUES ($1, 'xmtp', $2, 'bafyx', 'r1', '{"id": "x"}', 'verified', 'x', 'production', now()),
                      ($1, 'didcomm', $3, 'bafyd', 'r1', '{"did": "d"}', 'valid', NULL, NULL, NULL)""",
            DID,
            f"at://{DID}/org.xmtp.inbox/self",
            f"at://{DID}/at.didcomm.keyPackage/self",
        )
        for _ in range(2):  # version 1 kept every repeat of a rejection
            await conn.execute(
                "INSERT INTO rejections (did, kind, reason, detail) VALUES ($1, 'record', 'bad', 'p')", DID
            )
        await conn.execute("INSERT INTO cursors (upstream, seq) VALUES ('wss://relay', 42)")
    await apply_schema(db_pool)
    await apply_schema(db_pool)  # and the upgraded schema applies over itself
    rows = await db_pool.fetch("SELECT uri, collection, rkey, protocol, status, xmtp_env FROM bindings ORDER BY uri")
    assert [tuple(r) for r in rows] == [
        (f"at://{DID}/at.didcomm.keyPackage/self", "at.didcomm.keyPackage", "self", "didcomm", "valid", None),
        (f"at://{DID}/org.xmtp.inbox/self", "org.xmtp.inbox", "self", "xmtp", "verified", "production"),
    ]
    assert await db_pool.fetchval("SELECT seq FROM cursors") == 42
    assert await db_pool.fetchval("SELECT count FROM rejections") == 1
    assert await db_pool.fetchval("SELECT value FROM schema_meta WHERE key = 'version'") == "2"
    # the upgraded index takes the new writes: several records per account, any protocol
    await db_pool.execute(
        """INSERT INTO bindings (uri, did, collection, rkey, protocol, cid, rev, record, status)
           VALUES ($1, $2, 'blue.catbird.chat.device', 'd1', 'catbird', 'bafyc', 'r2', '{}', 'valid')""",
        f"at://{DID}/blue.catbird.chat.device/d1",
        DID,
    )
    assert await db_pool.fetchval("SELECT count(*) FROM bindings WHERE did = $1", DID) == 3
