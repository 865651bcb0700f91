"""indexer/store/status.py: what `atmx status`, `_health` and the status page report."""

from __future__ import annotations

import asyncpg
from seed import seed_account, seed_didcomm, seed_xmtp

from atmx.indexer.store.status import backfill_status, index_status


async def test_an_empty_index(db_pool: asyncpg.Pool) -> None:
    status = await index_status(db_pool)
    assert status["firehose"] == {"state": "disconnected"}  # no indexer has reported
    assert status["accounts"] == 0 and status["hidden"] == {"accounts": 0, "bindings": 0}
    # every protocol's statuses are listed, with zeros, so a dashboard sees the whole table
    assert {(r["protocol"], r["status"]) for r in status["bindings"]} >= {("xmtp", "verified"), ("didcomm", "valid")}
    assert all(r["count"] == 0 for r in status["bindings"])
    assert status["backfill"] == {
        "repos": 0,
        "done": 0,
        "pending": 0,
        "failed": 0,
        "skipped": 0,
        "complete": False,
        "sources": 0,
        "sourcesComplete": 0,
        "resyncQueue": 0,
    }


async def test_counts_keep_hidden_accounts_apart_and_report_the_firehose(db_pool: asyncpg.Pool) -> None:
    await seed_account(db_pool, "did:plc:a")
    await seed_account(db_pool, "did:plc:b", status="takendown")
    await seed_account(db_pool, "did:plc:c")  # no binding: not counted
    await seed_xmtp(db_pool, "did:plc:a")
    await seed_didcomm(db_pool, "did:plc:a", status="invalid", reason="bad_peer_did")
    await seed_xmtp(db_pool, "did:plc:b")
    await db_pool.execute(
        "INSERT INTO cursors (upstream, seq, event_time) VALUES ('wss://r.test', 42, now() - interval '30 seconds')"
    )
    await db_pool.execute(
        "INSERT INTO firehose_status (upstream, state, connected, lag_seconds, received_at)"
        " VALUES ('wss://r.test', 'idle', true, 0, now() - interval '5 seconds')"
    )
    status = await index_status(db_pool)
    assert status["accounts"] == 1 and status["hidden"] == {"accounts": 1, "bindings": 1}
    counts = {(r["protocol"], r["status"]): r["count"] for r in status["bindings"]}
    assert counts[("xmtp", "verified")] == 1 and counts[("didcomm", "invalid")] == 1
    assert counts[("didcomm", "valid")] == 0
    firehose = status["firehose"]
    assert (firehose["state"], firehose["cursor"], firehose["lagSeconds"]) == ("idle", 42, 0)
    assert 4 <= firehose["idleSeconds"] < 60


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
