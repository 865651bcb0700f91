"""What `atmx status`, `_health` and the status page report: cursor, lag, counts, backfill progress."""

from __future__ import annotations

from typing import Any

import asyncpg


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


async def index_status(pool: asyncpg.Pool) -> dict[str, Any]:
    """Cursor, lag and counts by status for `atmx status`."""
    cursors = await pool.fetch(
        "SELECT upstream, seq, event_time, extract(epoch FROM now() - event_time)::float8 AS lag FROM cursors"
    )
    accounts = await pool.fetch(
        "SELECT CASE WHEN active THEN 'active' ELSE coalesce(status, 'inactive') END AS s, count(*) AS n "
        "FROM accounts GROUP BY 1"
    )
    bindings = await pool.fetch("SELECT protocol, status, count(*) AS n FROM bindings GROUP BY 1, 2")
    return {
        "cursors": [
            {
                "upstream": r["upstream"],
                "seq": r["seq"],
                "eventTime": r["event_time"].isoformat() if r["event_time"] else None,
                "lagSeconds": r["lag"],
            }
            for r in cursors
        ],
        "accounts": {r["s"]: r["n"] for r in accounts},
        "bindings": {f"{r['protocol']}.{r['status']}": r["n"] for r in bindings},
        "backfill": await backfill_status(pool),
    }
