"""How long the index keeps what only grows: the change log, the binding history, rejections.

Each is pruned by age in batches, so a large first pruning never holds a long transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

import asyncpg

from atmx.indexer.store.changes import prune_changes

__all__ = ["prune_changes", "prune_history", "prune_rejections"]

_BATCH: Final = 10_000

_PRUNE_HISTORY = """
WITH gone AS (DELETE FROM binding_history WHERE id IN (
    SELECT id FROM binding_history WHERE observed_at < $1 ORDER BY id LIMIT $2) RETURNING 1)
SELECT count(*) FROM gone
"""

_PRUNE_REJECTIONS = """
WITH gone AS (DELETE FROM rejections WHERE id IN (
    SELECT id FROM rejections WHERE at < $1 ORDER BY id LIMIT $2) RETURNING 1)
SELECT count(*) FROM gone
"""


async def _prune(pool: asyncpg.Pool, statement: str, older_than: datetime) -> int:
    total = 0
    while True:
        n = int(await pool.fetchval(statement, older_than, _BATCH))
        total += n
        if n < _BATCH:
            return total


async def prune_history(pool: asyncpg.Pool, older_than: datetime) -> int:
    return await _prune(pool, _PRUNE_HISTORY, older_than)


async def prune_rejections(pool: asyncpg.Pool, older_than: datetime) -> int:
    return await _prune(pool, _PRUNE_REJECTIONS, older_than)
