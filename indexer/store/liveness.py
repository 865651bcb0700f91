"""The indexer's report on its firehose connection, for processes that only read the database.

The indexer writes one row per upstream every few seconds (indexer/liveness.py); `atmx serve`,
`atmx status` and `_health` read it. Times are the database's clock on both sides, so the
reader and the writer need not agree on theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

STATES = ("live", "idle", "lagging", "disconnected")

# A report older than this means no indexer is reporting (stopped, crashed, or a standby).
STALE_AFTER = 15.0
SAVE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Report:
    state: str
    connected: bool
    lag_seconds: float
    idle_seconds: float | None  # since the last event this process received; None before the first


_SAVE = """
INSERT INTO firehose_status (upstream, state, connected, lag_seconds, received_at, reported_at)
VALUES ($1, $2, $3, $4, now() - make_interval(secs => $5::float8), now())
ON CONFLICT (upstream) DO UPDATE SET
    state = EXCLUDED.state,
    connected = EXCLUDED.connected,
    lag_seconds = EXCLUDED.lag_seconds,
    received_at = coalesce(EXCLUDED.received_at, firehose_status.received_at),
    reported_at = EXCLUDED.reported_at
"""


async def save_report(pool: asyncpg.Pool, upstream: str, report: Report) -> None:
    """Write the report; a restart keeps the time of the last event received before it."""
    await pool.execute(
        _SAVE, upstream, report.state, report.connected, report.lag_seconds, report.idle_seconds, timeout=SAVE_TIMEOUT
    )
