"""Every SQL statement the indexer writes with (asyncpg). The API's reads live in queries.py.

The pipeline turns each processed event into a `WriteSet` (plain data) and the store applies
it in one transaction together with the cursor that the write covers, so the saved cursor
never runs ahead of the index.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from .identity import CachedDid
from .writes import CursorUpdate, WriteSet


@dataclass(frozen=True, slots=True)
class AccountState:
    did: str
    rev: str | None
    data_cid: str | None
    active: bool
    status: str | None
    handle: str | None
    handle_verified: bool


_UPSERT_ACCOUNT = """
INSERT INTO accounts (did) VALUES ($1) ON CONFLICT (did) DO NOTHING
"""

# TIDs sort lexicographically in time order, so `<` on text is rev order.
_SET_REPO_STATE = """
UPDATE accounts SET rev = $2, data_cid = $3, updated_at = now()
WHERE did = $1 AND (rev IS NULL OR rev < $2)
"""

_SET_IDENTITY = """
UPDATE accounts SET handle = $2, handle_verified = $3, pds = $4, handle_checked_at = now(), updated_at = now()
WHERE did = $1
"""

_SET_STATUS = """
UPDATE accounts SET active = $2, status = $3, updated_at = now() WHERE did = $1
"""

# The same record delivered again (a replay, a backfill) keeps the outcome of its XMTP
# check; a new record starts over and is due for checking at once.
_KEEP = "(bindings.cid = EXCLUDED.cid AND EXCLUDED.status = 'pending')"
_UPSERT_BINDING = f"""
INSERT INTO bindings (did, protocol, uri, cid, rev, record, status, reason, xmtp_inbox_id, created_at,
                      indexed_at, xmtp_next_check)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now(), CASE WHEN $7 = 'pending' THEN now() END)
ON CONFLICT (did, protocol) DO UPDATE SET
    uri = EXCLUDED.uri, cid = EXCLUDED.cid, rev = EXCLUDED.rev, record = EXCLUDED.record,
    xmtp_inbox_id = EXCLUDED.xmtp_inbox_id, created_at = EXCLUDED.created_at, indexed_at = now(),
    status = CASE WHEN {_KEEP} THEN bindings.status ELSE EXCLUDED.status END,
    reason = CASE WHEN {_KEEP} THEN bindings.reason ELSE EXCLUDED.reason END,
    verified_at = CASE WHEN {_KEEP} THEN bindings.verified_at END,
    xmtp_env = CASE WHEN {_KEEP} THEN bindings.xmtp_env END,
    xmtp_installation = CASE WHEN {_KEEP} THEN bindings.xmtp_installation END,
    xmtp_checked_at = CASE WHEN {_KEEP} THEN bindings.xmtp_checked_at END,
    xmtp_next_check = CASE WHEN {_KEEP} THEN bindings.xmtp_next_check ELSE EXCLUDED.xmtp_next_check END,
    xmtp_attempts = CASE WHEN {_KEEP} THEN bindings.xmtp_attempts ELSE 0 END
WHERE bindings.rev < EXCLUDED.rev
"""

_DELETE_BINDING = "DELETE FROM bindings WHERE did = $1 AND protocol = $2 AND rev < $3"

_INSERT_REJECTION = "INSERT INTO rejections (did, seq, kind, reason, detail) VALUES ($1, $2, $3, $4, $5)"

_QUEUE_RESYNC = """
INSERT INTO resync_queue (did, reason) VALUES ($1, $2)
ON CONFLICT (did) DO UPDATE SET reason = EXCLUDED.reason, queued_at = now()
"""

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

    async def apply(self, writes: Iterable[WriteSet], cursor: CursorUpdate | None) -> None:
        """Apply write sets and the cursor that covers them in one transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            for ws in writes:
                await _apply_one(conn, ws)
            if cursor is not None:
                await conn.execute(_SAVE_CURSOR, cursor.upstream, cursor.seq, cursor.event_time)

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


async def _apply_one(conn: asyncpg.Connection, ws: WriteSet) -> None:
    if ws.create_account or ws.upserts:
        await conn.execute(_UPSERT_ACCOUNT, ws.did)
    if ws.identity is not None:
        await conn.execute(_SET_IDENTITY, ws.did, ws.identity.handle, ws.identity.handle_verified, ws.identity.pds)
    if ws.status is not None:
        await conn.execute(_SET_STATUS, ws.did, ws.status.active, ws.status.status)
    for b in ws.upserts:
        await conn.execute(
            _UPSERT_BINDING,
            ws.did,
            b.protocol,
            b.uri,
            b.cid,
            b.rev,
            b.record,
            b.status,
            b.reason,
            b.xmtp_inbox_id,
            b.created_at,
        )
    for protocol, rev in ws.deletes:
        await conn.execute(_DELETE_BINDING, ws.did, protocol, rev)
    if ws.repo_state is not None:
        await conn.execute(_SET_REPO_STATE, ws.did, ws.repo_state[0], ws.repo_state[1])
    for r in ws.rejections:
        await conn.execute(_INSERT_REJECTION, ws.did, ws.seq, r.kind, r.reason, r.detail)
    if ws.resync_reason is not None:
        await conn.execute(_QUEUE_RESYNC, ws.did, ws.resync_reason)

