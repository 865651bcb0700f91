"""The SQL of the XMTP stage (xmtp/verifier.py): bindings due for a check, their verdicts, and
each inbox's identity log as fetched from one XMTP environment."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Final

import asyncpg

from atmx.indexer.index.batch import Change, HistoryEntry, binding_change
from atmx.indexer.records.stored import StoredBinding
from atmx.indexer.records.view import binding_view
from atmx.indexer.store.apply import append_changes, append_history

_STORED_FIELDS: Final = tuple(f.name for f in fields(StoredBinding))


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
    read_at: datetime | None = None  # when the whole log was last read and reconciled (None: never stored)


_DUE_XMTP = """
SELECT did, cid, xmtp_inbox_id, record->>'verificationSignature' AS signature, status, xmtp_attempts
FROM bindings
WHERE protocol = 'xmtp' AND xmtp_inbox_id IS NOT NULL AND xmtp_next_check <= $1
ORDER BY xmtp_next_check
LIMIT $2
"""

# guarded by cid: a record replaced while it was being checked keeps its own state. Returns the
# row as it now stands, with its status and reason before the check.
_SET_XMTP_OUTCOME = """
WITH old AS (
    SELECT uri, status AS old_status, reason AS old_reason FROM bindings
    WHERE did = $1 AND protocol = 'xmtp' AND cid = $2 FOR UPDATE
)
UPDATE bindings b SET status = $3, reason = $4, xmtp_env = $5, xmtp_installation = $6,
    verified_at = CASE WHEN $3 = 'verified' THEN COALESCE(
        CASE WHEN b.status = 'verified' AND b.xmtp_installation = $6 THEN b.verified_at END, $7) END,
    xmtp_checked_at = $7, xmtp_next_check = $8, xmtp_attempts = $9
FROM old WHERE b.uri = old.uri
RETURNING old.old_status, old.old_reason, b.uri, b.did, b.collection, b.rkey, b.protocol, b.cid, b.rev, b.record,
    b.status, b.reason, b.xmtp_inbox_id, b.xmtp_env, b.xmtp_installation, b.created_at, b.indexed_at, b.verified_at,
    (SELECT CASE WHEN a.handle_verified THEN a.handle END FROM accounts a WHERE a.did = b.did) AS handle
"""


class XmtpStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

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

    async def set_xmtp_outcome(self, o: XmtpOutcome) -> bool:
        """Store a verdict; a verdict that changes the binding's status or reason is announced in the
        change log and kept in the binding's history, in the same transaction. True if it changed."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
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
            if row is None or (row["old_status"], row["old_reason"]) == (o.status, o.reason):
                return False
            b = StoredBinding(**{k: row[k] for k in _STORED_FIELDS})
            await append_changes(conn, [Change(b.did, "binding", binding_change(b, b.rev, "verdict"))])
            await append_history(
                conn,
                [HistoryEntry(b.did, b.uri, b.protocol, b.rev, b.cid, "verdict", b.status, b.reason, binding_view(b))],
            )
        return True

    async def load_inbox_log(self, inbox_id: str, env: str) -> InboxLog:
        row = await self.pool.fetchrow(
            "SELECT last_sequence_id, updates, sequence_ids, fetched_at FROM xmtp_inbox_logs"
            " WHERE inbox_id = $1 AND env = $2",
            inbox_id,
            env,
        )
        if row is None:
            return InboxLog(0, [], [])
        return _inbox_log(row)

    async def append_inbox_log(
        self, inbox_id: str, env: str, fresh: list[tuple[int, bytes]], *, had_updates: bool
    ) -> InboxLog:
        """Append new log entries; when the log changed, every binding of the inbox is due again.

        Sequence ids only grow: `fresh` must strictly increase and start after the stored log, or
        nothing is appended (a concurrent append got there first) and the stored log is returned.
        """
        _require_increasing(fresh)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """INSERT INTO xmtp_inbox_logs (inbox_id, env, last_sequence_id, updates, sequence_ids)
                   VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (inbox_id, env) DO UPDATE SET
                       updates = xmtp_inbox_logs.updates || EXCLUDED.updates,
                       sequence_ids = xmtp_inbox_logs.sequence_ids || EXCLUDED.sequence_ids,
                       last_sequence_id = EXCLUDED.last_sequence_id
                   WHERE xmtp_inbox_logs.last_sequence_id < $6
                   RETURNING last_sequence_id, updates, sequence_ids, fetched_at""",
                inbox_id,
                env,
                fresh[-1][0],
                [b for _, b in fresh],
                [s for s, _ in fresh],
                fresh[0][0],
            )
            if row is not None and had_updates:
                await _due_again(conn, inbox_id)
        if row is None:  # someone else appended first
            return await self.load_inbox_log(inbox_id, env)
        return _inbox_log(row)

    async def replace_inbox_log(
        self,
        inbox_id: str,
        env: str,
        entries: list[tuple[int, bytes]],
        *,
        read_at: datetime,
        expected_last: int,
        had_updates: bool,
    ) -> bool:
        """Store the whole log as read at `read_at`, if the stored one still ends at `expected_last`
        (0: none stored) and is not longer. The caller has checked that `entries` holds every stored
        entry (`inbox_log.reconcile`); the guard keeps what a concurrent check stored meanwhile.
        Returns whether it was stored; when the log changed, every binding of the inbox is due again."""
        _require_increasing(entries)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """INSERT INTO xmtp_inbox_logs (inbox_id, env, last_sequence_id, updates, sequence_ids, fetched_at)
                   VALUES ($1, $2, $3, $4, $5, $6)
                   ON CONFLICT (inbox_id, env) DO UPDATE SET
                       updates = EXCLUDED.updates, sequence_ids = EXCLUDED.sequence_ids,
                       last_sequence_id = EXCLUDED.last_sequence_id, fetched_at = EXCLUDED.fetched_at
                   WHERE xmtp_inbox_logs.last_sequence_id = $7
                     AND cardinality(xmtp_inbox_logs.sequence_ids) <= cardinality(EXCLUDED.sequence_ids)
                   RETURNING 1""",
                inbox_id,
                env,
                entries[-1][0],
                [b for _, b in entries],
                [s for s, _ in entries],
                read_at,
                expected_last,
            )
            if row is not None and had_updates:
                await _due_again(conn, inbox_id)
        return row is not None

    async def discard_inbox_log(self, inbox_id: str, env: str) -> None:
        """Forget a stored log that no longer folds: the next check reads the whole log again."""
        await self.pool.execute("DELETE FROM xmtp_inbox_logs WHERE inbox_id = $1 AND env = $2", inbox_id, env)

    async def request_xmtp_recheck(self, subject: str) -> int:
        """Make the bindings of a DID or an inbox due now; returns how many."""
        result: str = await self.pool.execute(
            "UPDATE bindings SET xmtp_next_check = now() WHERE protocol = 'xmtp' AND xmtp_inbox_id IS NOT NULL "
            "AND (did = $1 OR xmtp_inbox_id = $1)",
            subject,
        )
        return int(result.split()[-1])


def _inbox_log(row: asyncpg.Record) -> InboxLog:
    return InboxLog(row["last_sequence_id"], list(row["updates"]), list(row["sequence_ids"]), row["fetched_at"])


def _require_increasing(entries: Sequence[tuple[int, bytes]]) -> None:
    # a log out of order or with a repeated id would fold differently from the node's own
    if not entries:
        raise ValueError("no inbox log entries to store")
    previous = 0
    for sequence_id, _ in entries:
        if sequence_id <= previous:
            raise ValueError(f"inbox log sequence ids must strictly increase from 1: {sequence_id} after {previous}")
        previous = sequence_id


async def _due_again(conn: asyncpg.Connection, inbox_id: str) -> None:
    await conn.execute(
        "UPDATE bindings SET xmtp_next_check = now() WHERE protocol = 'xmtp' AND xmtp_inbox_id = $1", inbox_id
    )
