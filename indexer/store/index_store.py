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

from atmx.indexer.identity.resolver import CachedDid
from atmx.indexer.index.decide import RepoState
from atmx.indexer.index.writes import CursorUpdate, WriteSet
from atmx.indexer.store.apply import apply_writes, storable_text

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


@dataclass(frozen=True, slots=True)
class XmtpDue:
    """An XMTP binding whose inbox check is due."""

    did: str
    cid: str
    inbox_id: str
    signature: str  # verificationSignature as published (validated base64 of 64 bytes)
    status: str
    attempts: int


@dataclass(frozen=True, slots=True)
class XmtpOutcome:
    did: str
    cid: str
    status: str
    reason: str | None
    env: str | None
    installation: str | None  # hex of the 32-byte installation key
    checked_at: datetime
    next_check: datetime
    attempts: int


@dataclass(frozen=True, slots=True)
class InboxLog:
    last_sequence_id: int
    updates: list[bytes]
    sequence_ids: list[int]


_INSERT_REJECTION = """
INSERT INTO rejections (did, seq, kind, reason, detail) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (did, kind, reason, md5(coalesce(detail, ''))) DO UPDATE SET
    count = rejections.count + 1, seq = EXCLUDED.seq, at = now()
"""

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


_DUE_XMTP = """
SELECT did, cid, xmtp_inbox_id, record->>'verificationSignature' AS signature, status, xmtp_attempts
FROM bindings
WHERE protocol = 'xmtp' AND xmtp_inbox_id IS NOT NULL AND xmtp_next_check <= $1
ORDER BY xmtp_next_check
LIMIT $2
"""

_SET_XMTP_OUTCOME = """
UPDATE bindings SET status = $3, reason = $4, xmtp_env = $5, xmtp_installation = $6,
    verified_at = CASE WHEN $3 = 'verified' THEN COALESCE(
        CASE WHEN status = 'verified' AND xmtp_installation = $6 THEN verified_at END, $7) END,
    xmtp_checked_at = $7, xmtp_next_check = $8, xmtp_attempts = $9
WHERE did = $1 AND protocol = 'xmtp' AND cid = $2
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
                detail = storable_text(f"{type(error).__name__}: {error}"[:500])
                await conn.execute(_INSERT_REJECTION, ws.did, ws.seq, "event", "store_error", detail)
                await conn.execute(_QUEUE_RESYNC, ws.did, "store_error")
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

    # --- xmtp (indexer/xmtp/verifier.py) ---

    async def due_xmtp_bindings(self, now: datetime, limit: int) -> list[XmtpDue]:
        rows = await self.pool.fetch(_DUE_XMTP, now, limit)
        return [
            XmtpDue(r["did"], r["cid"], r["xmtp_inbox_id"], r["signature"], r["status"], r["xmtp_attempts"])
            for r in rows
        ]

    async def xmtp_queue_size(self, now: datetime) -> int:
        n: int = await self.pool.fetchval(
            "SELECT count(*) FROM bindings"
            " WHERE protocol = 'xmtp' AND xmtp_inbox_id IS NOT NULL AND xmtp_next_check <= $1",
            now,
        )
        return n

    async def set_xmtp_outcome(self, o: XmtpOutcome) -> None:
        # guarded by cid: a record replaced while it was being checked keeps its own state
        await self.pool.execute(
            _SET_XMTP_OUTCOME,
            o.did,
            o.cid,
            o.status,
            o.reason,
            o.env,
            o.installation,
            o.checked_at,
            o.next_check,
            o.attempts,
        )

    async def load_inbox_log(self, inbox_id: str, env: str) -> InboxLog:
        row = await self.pool.fetchrow(
            "SELECT last_sequence_id, updates, sequence_ids FROM xmtp_inbox_logs WHERE inbox_id = $1 AND env = $2",
            inbox_id,
            env,
        )
        if row is None:
            return InboxLog(0, [], [])
        return InboxLog(row["last_sequence_id"], list(row["updates"]), list(row["sequence_ids"]))

    async def append_inbox_log(
        self: Store, inbox_id: str, env: str, fresh: list[tuple[int, bytes]], *, had_updates: bool
    ) -> InboxLog:
        """Append new log entries; when the log changed, every binding of the inbox is due again."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """INSERT INTO xmtp_inbox_logs (inbox_id, env, last_sequence_id, updates, sequence_ids, fetched_at)
                   VALUES ($1, $2, $3, $4, $5, now())
                   ON CONFLICT (inbox_id, env) DO UPDATE SET
                       updates = xmtp_inbox_logs.updates || EXCLUDED.updates,
                       sequence_ids = xmtp_inbox_logs.sequence_ids || EXCLUDED.sequence_ids,
                       last_sequence_id = EXCLUDED.last_sequence_id, fetched_at = now()
                   WHERE xmtp_inbox_logs.last_sequence_id < EXCLUDED.last_sequence_id
                   RETURNING last_sequence_id, updates, sequence_ids""",
                inbox_id,
                env,
                max(s for s, _ in fresh),
                [b for _, b in fresh],
                [s for s, _ in fresh],
            )
            if had_updates:
                await conn.execute(
                    "UPDATE bindings SET xmtp_next_check = now() WHERE protocol = 'xmtp' AND xmtp_inbox_id = $1",
                    inbox_id,
                )
        if row is None:  # someone else appended first
            return await self.load_inbox_log(inbox_id, env)
        return InboxLog(row["last_sequence_id"], list(row["updates"]), list(row["sequence_ids"]))

    async def request_xmtp_recheck(self, subject: str) -> int:
        """Make the bindings of a DID or an inbox due now; returns how many."""
        result: str = await self.pool.execute(
            "UPDATE bindings SET xmtp_next_check = now() WHERE protocol = 'xmtp' AND xmtp_inbox_id IS NOT NULL "
            "AND (did = $1 OR xmtp_inbox_id = $1)",
            subject,
        )
        return int(result.split()[-1])
