"""What `atmx status`, `_health` and the status page report: firehose state, counts, backfill progress."""

from __future__ import annotations

from typing import Any

import asyncpg

from atmx.indexer.store import queries


async def backfill_status(pool: asyncpg.Pool) -> dict[str, Any]:
    """Backfill and repair progress for `atmx status` and `_health`."""
    rows = await pool.fetch("SELECT state, count(*) AS n FROM backfill_repos GROUP BY state")
    states = {r["state"]: r["n"] for r in rows}
    sources = await pool.fetchrow(
        "SELECT count(*) AS n, count(*) FILTER (WHERE complete) AS complete FROM backfill_sources"
    )
    queue = await pool.fetchval("SELECT count(*) FROM resync_queue")
    total = sum(states.values())
    finished = states.get("done", 0) + states.get("skipped", 0)
    return {
        "repos": total,
        "done": states.get("done", 0),
        "pending": states.get("pending", 0),
        "failed": states.get("failed", 0),
        "skipped": states.get("skipped", 0),
        "complete": total > 0 and finished == total and sources["n"] == sources["complete"],
        "sources": sources["n"],
        "sourcesComplete": sources["complete"],
        "resyncQueue": queue,
    }


def binding_rows(counts: queries.IndexCounts) -> list[dict[str, Any]]:
    """Visible bindings by protocol and status: every status a protocol can have, 0 included."""
    return [
        {"protocol": protocol, "status": status, "count": n}
        for protocol, statuses in counts.by_protocol()
        for status, n in statuses
    ]


def firehose(health: queries.Health) -> dict[str, Any]:
    """The firehose part of `atmx status` and `getIndexStatus`: state, cursor, lag and idle time."""
    out: dict[str, Any] = {"state": health.state}
    if health.cursor is not None:
        out["cursor"] = health.cursor
    if health.lag_seconds is not None:
        out["lagSeconds"] = round(health.lag_seconds, 1)
    if health.idle_seconds is not None:
        out["idleSeconds"] = round(health.idle_seconds, 1)
    return out


async def index_status(pool: asyncpg.Pool) -> dict[str, Any]:
    """What `atmx status` prints: the counts the API serves, hidden accounts' apart, and progress."""
    counts = await queries.get_index_counts(pool)
    return {
        "firehose": firehose(await queries.get_health(pool)),
        "accounts": counts.accounts,
        "bindings": binding_rows(counts),
        "hidden": {"accounts": counts.hidden_accounts, "bindings": counts.hidden_bindings},
        "backfill": await backfill_status(pool),
    }
