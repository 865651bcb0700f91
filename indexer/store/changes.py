"""The change log as the stream reads it, and its retention (asyncpg).

Rows are appended by store/apply.py (and the XMTP stage) in the transaction of the change;
seqs become visible in commit order (see CHANGE_LOCK there), so a reader that pages by
`seq > last` never skips a row. Retention deletes old rows and records how far it deleted,
so a consumer's cursor can be told apart: inside the log, pruned (OutdatedCursor), or ahead
of the head (FutureCursor).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg

__all__ = ["ChangeRow", "LogBounds", "log_bounds", "prune_changes", "read_changes"]

QUERY_TIMEOUT: Final = 10.0
_PRUNED_KEY: Final = "changes_pruned_through"

_READ = """
SELECT seq, time, did, kind, protocol, body::text AS body FROM changes
WHERE seq > $1 AND ($3::text[] IS NULL OR did = ANY($3::text[]))
ORDER BY seq LIMIT $2
"""

_BOUNDS = """
SELECT (SELECT max(seq) FROM changes) AS newest,
       (SELECT value::bigint FROM schema_meta WHERE key = 'changes_pruned_through') AS pruned
"""

_PRUNE = """
WITH gone AS (DELETE FROM changes WHERE seq IN (
    SELECT seq FROM changes WHERE time < $1 ORDER BY seq LIMIT $2) RETURNING seq)
SELECT count(*) AS n, max(seq) AS through FROM gone
"""

_SET_PRUNED = """
INSERT INTO schema_meta (key, value) VALUES ('changes_pruned_through', $1::text)
ON CONFLICT (key) DO UPDATE SET value = greatest(schema_meta.value::bigint, EXCLUDED.value::bigint)::text
"""


@dataclass(frozen=True, slots=True)
class ChangeRow:
    seq: int
    time: datetime
    did: str
    kind: str  # binding | account | handle
    protocol: str | None  # of a binding change
    body: str  # the message body as JSON text (without seq and time)


@dataclass(frozen=True, slots=True)
class LogBounds:
    newest: int  # the head: the highest seq ever appended and still known (0 for an empty log)
    pruned_through: int  # every seq at or below this was deleted by retention (0: none)


async def read_changes(
    pool: asyncpg.Pool, after: int, limit: int, dids: Sequence[str] | None = None
) -> list[ChangeRow]:
    rows = await pool.fetch(_READ, after, limit, list(dids) if dids is not None else None, timeout=QUERY_TIMEOUT)
    return [ChangeRow(r["seq"], r["time"], r["did"], r["kind"], r["protocol"], r["body"]) for r in rows]


async def log_bounds(pool: asyncpg.Pool) -> LogBounds:
    row: Any = await pool.fetchrow(_BOUNDS, timeout=QUERY_TIMEOUT)
    pruned = row["pruned"] or 0
    return LogBounds(newest=max(row["newest"] or 0, pruned), pruned_through=pruned)


async def prune_changes(pool: asyncpg.Pool, older_than: datetime, *, batch: int = 10_000) -> int:
    """Delete changes older than `older_than`, a batch per transaction; returns how many."""
    total = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_PRUNE, older_than, batch)
            if row["n"]:
                await conn.execute(_SET_PRUNED, str(row["through"]))
        total += int(row["n"])
        if row["n"] < batch:
            return total
