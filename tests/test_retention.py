"""store/retention.py and the change log's pruning: old rows go, recent ones stay, the log knows
how far it was pruned."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from atmx.indexer.index.writes import Rejection, WriteSet
from atmx.indexer.store.changes import log_bounds
from atmx.indexer.store.index_store import Store
from atmx.indexer.store.retention import prune_changes, prune_history, prune_rejections

DID = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"


async def test_each_log_is_pruned_by_age(db_pool: asyncpg.Pool) -> None:
    store = Store(db_pool)
    for i in range(3):
        await store.apply([WriteSet(did=DID, create_account=True, rejections=[Rejection("event", f"r{i}")])], None)
        await db_pool.execute(
            "INSERT INTO changes (seq, did, kind, body) VALUES (nextval('change_seq'), $1, 'handle', '{}')", DID
        )
        await db_pool.execute(
            "INSERT INTO binding_history (did, uri, protocol, rev, action, status)"
            " VALUES ($1, 'u', 'xmtp', 'r', 'delete', 'deleted')",
            DID,
        )
    old = datetime.now(UTC) - timedelta(days=10)
    for table, column in (("changes", "time"), ("binding_history", "observed_at"), ("rejections", "at")):
        await db_pool.execute(f"UPDATE {table} SET {column} = $1 WHERE ctid IN (SELECT ctid FROM {table} LIMIT 2)", old)
    cutoff = datetime.now(UTC) - timedelta(days=7)
    assert await prune_changes(db_pool, cutoff) == 2
    assert await prune_history(db_pool, cutoff) == 2
    assert await prune_rejections(db_pool, cutoff) == 2
    for table in ("changes", "binding_history", "rejections"):
        assert await db_pool.fetchval(f"SELECT count(*) FROM {table}") == 1
    bounds = await log_bounds(db_pool)
    assert bounds.pruned_through >= 1 and bounds.newest >= bounds.pruned_through
    assert await prune_changes(db_pool, cutoff) == 0  # nothing more: the mark does not move back
    assert (await log_bounds(db_pool)).pruned_through == bounds.pruned_through
