"""Every SQL statement the indexer writes with (asyncpg). The API's reads live in queries.py.

The pipeline turns each processed event into a `WriteSet` (plain data) and the store applies
a batch of them in one transaction together with the cursor that the batch covers, so the
saved cursor never runs ahead of the index. A batch costs one round trip per kind of
statement (asyncpg's executemany), not one per event.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from atmx.indexer.identity.cache import CachedDid
from atmx.indexer.index.decide import RepoState
from atmx.indexer.index.writes import CursorUpdate, WriteSet
from atmx.indexer.store.apply import apply_writes, record_refused_write

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AccountState:
    did: str
    rev: str | None
    data_cid: str | None
    active: bool
    status: str | None
    handle: str | None
    handle_verified: bool


_SAVE_CURSOR = """
INSERT INTO cursors (upstream, seq, event_time, updated_at) VALUES ($1, $2, $3, now())
ON CONFLICT (upstream) DO UPDATE SET
    seq = GREATEST(cursors.seq, EXCLUDED.seq),
    event_time = CASE WHEN EXCLUDED.seq >= cursors.seq THEN EXCLUDED.event_time ELSE cursors.event_time END,
    updated_at = now()
"""


class Store:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def tracked_dids(self) -> set[str]:
        rows = await self.pool.fetch("SELECT did FROM accounts")
        return {r["did"] for r in rows}

    async def repo_state(self, did: str) -> RepoState | None:
        row = await self.pool.fetchrow("SELECT rev, data_cid FROM accounts WHERE did = $1", did)
        return None if row is None else RepoState(row["rev"], row["data_cid"])

    async def account(self, did: str) -> AccountState | None:
        row = await self.pool.fetchrow(
            "SELECT did, rev, data_cid, active, status, handle, handle_verified FROM accounts WHERE did = $1",
            did,
        )
        if row is None:
            return None
        return AccountState(
            did=row["did"],
            rev=row["rev"],
            data_cid=row["data_cid"],
            active=row["active"],
            status=row["status"],
            handle=row["handle"],
            handle_verified=row["handle_verified"],
        )

    async def load_cursor(self, upstream: str) -> int | None:
        seq: int | None = await self.pool.fetchval("SELECT seq FROM cursors WHERE upstream = $1", upstream)
        return seq

    async def save_cursor(self, cursor: CursorUpdate) -> None:
        await self.pool.execute(_SAVE_CURSOR, cursor.upstream, cursor.seq, cursor.event_time)

    async def apply(self, writes: Sequence[WriteSet], cursor: CursorUpdate | None) -> dict[str, str]:
        """Apply a batch of write sets and the cursor that covers them, in one transaction.
        Returns the repos whose stored rev was ahead of this batch (another writer's)."""
        async with self.pool.acquire() as conn, conn.transaction():
            newer = await apply_writes(conn, writes, datetime.now(UTC))
            if cursor is not None:
                await conn.execute(_SAVE_CURSOR, cursor.upstream, cursor.seq, cursor.event_time)
        return newer

    async def apply_isolated(
        self, writes: Sequence[WriteSet], cursor: CursorUpdate | None
    ) -> tuple[dict[str, str], list[tuple[WriteSet, Exception]]]:
        """Like `apply`, each write set in a savepoint of its own: one the database refuses is
        recorded as a rejection and queued for a proof re-fetch instead, and the rest still apply."""
        failed: list[tuple[WriteSet, Exception]] = []
        newer: dict[str, str] = {}
        now = datetime.now(UTC)
        async with self.pool.acquire() as conn, conn.transaction():
            for ws in writes:
                try:
                    async with conn.transaction():
                        newer.update(await apply_writes(conn, [ws], now))
                except asyncpg.PostgresError as exc:
                    if isinstance(exc, asyncpg.PostgresConnectionError):
                        raise
                    failed.append((ws, exc))
            for ws, error in failed:
                await record_refused_write(conn, ws.did, ws.seq, error)
            if cursor is not None:
                await conn.execute(_SAVE_CURSOR, cursor.upstream, cursor.seq, cursor.event_time)
        return newer, failed

    # --- DID document cache (identity.DidCacheStore) ---

    async def load_did(self, did: str) -> CachedDid | None:
        row = await self.pool.fetchrow("SELECT doc, error, fetched_at FROM did_cache WHERE did = $1", did)
        if row is None:
            return None
        return CachedDid(doc=row["doc"], error=row["error"], fetched_at=row["fetched_at"])

    async def save_did(self, did: str, doc: dict[str, Any] | None, error: str | None, fetched_at: datetime) -> None:
        await self.pool.execute(
            """INSERT INTO did_cache (did, doc, error, fetched_at) VALUES ($1, $2, $3, $4)
               ON CONFLICT (did) DO UPDATE SET doc = EXCLUDED.doc, error = EXCLUDED.error,
                                               fetched_at = EXCLUDED.fetched_at""",
            did,
            doc,
            error,
            fetched_at,
        )

    async def due_handle_checks(self, interval: float, limit: int) -> list[str]:
        """Accounts with a handle not checked for `interval` seconds, the longest unchecked first."""
        rows = await self.pool.fetch(
            "SELECT did FROM accounts WHERE handle IS NOT NULL"
            " AND (handle_checked_at IS NULL OR handle_checked_at < now() - $1 * interval '1 second')"
            " ORDER BY handle_checked_at NULLS FIRST LIMIT $2",
            interval,
            limit,
        )
        return [r["did"] for r in rows]
