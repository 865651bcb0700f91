"""Every SQL statement the indexer writes with (asyncpg). The API's reads live in queries.py.

The pipeline turns each processed event into a `WriteSet` (plain data) and the store applies
a batch of them in one transaction together with the cursor that the batch covers, so the
saved cursor never runs ahead of the index. A batch costs one round trip per kind of
statement (asyncpg's executemany), not one per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from atmx.indexer.identity.resolver import CachedDid
from atmx.indexer.index.writes import CursorUpdate, WriteSet

log = logging.getLogger(__name__)

LISTEN_CHECK_SECONDS = 2.0  # how soon a LISTEN lost to a database restart is re-established


@dataclass(frozen=True, slots=True)
class AccountState:
    did: str
    rev: str | None
    data_cid: str | None
    active: bool
    status: str | None
    handle: str | None
    handle_verified: bool


@dataclass(slots=True)
class RepoState:
    """What the pipeline keeps in memory per indexed repo to order and chain its commits."""

    rev: str | None  # last verified commit
    data_cid: str | None  # its MST root
    seen_rev: str | None  # last commit seen on the firehose (unverified; see schema.sql)


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


_UPSERT_ACCOUNT = """
INSERT INTO accounts (did) VALUES ($1) ON CONFLICT (did) DO NOTHING
"""

# TIDs sort lexicographically in time order, so `<` on text is rev order.
_SET_REPO_STATE = """
UPDATE accounts SET rev = $2, data_cid = $3, updated_at = now(),
    seen_rev = CASE WHEN seen_rev IS NULL OR seen_rev < $2 THEN $2 ELSE seen_rev END
WHERE did = $1 AND (rev IS NULL OR rev < $2)
"""

_SET_SEEN_REV = """
UPDATE accounts SET seen_rev = $2 WHERE did = $1 AND (seen_rev IS NULL OR seen_rev < $2)
"""

# Before a batch touches bindings: lock the repos' rows (in one order, against deadlocks with
# the backfill job) and read how far they are, so nothing older than a stored proof is applied.
_LOCK_REPOS = """
SELECT did, rev FROM accounts WHERE did = ANY($1::text[]) ORDER BY did FOR UPDATE
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
        row = await self.pool.fetchrow("SELECT rev, data_cid, seen_rev FROM accounts WHERE did = $1", did)
        return None if row is None else RepoState(row["rev"], row["data_cid"], row["seen_rev"])

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

    async def apply(
        self, writes: Sequence[WriteSet], cursor: CursorUpdate | None, seen: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """Apply a batch of write sets, the chain revs seen and the cursor that covers them, in one
        transaction. Returns the repos whose stored rev was ahead of this batch (another writer's)."""
        async with self.pool.acquire() as conn, conn.transaction():
            writes, newer = await _drop_stale_live(conn, writes)
            await apply_writes(conn, writes)
            await _finish_batch(conn, seen, cursor)
        return newer

    async def apply_isolated(
        self, writes: Sequence[WriteSet], cursor: CursorUpdate | None, seen: Mapping[str, str] | None = None
    ) -> tuple[dict[str, str], list[tuple[WriteSet, Exception]]]:
        """Like `apply`, each write set in a savepoint of its own: one the database refuses is
        recorded as a rejection and queued for a proof re-fetch instead, and the rest still apply."""
        failed: list[tuple[WriteSet, Exception]] = []
        async with self.pool.acquire() as conn, conn.transaction():
            writes, newer = await _drop_stale_live(conn, writes)
            for ws in writes:
                try:
                    async with conn.transaction():
                        await apply_writes(conn, [ws])
                except asyncpg.PostgresError as exc:
                    if isinstance(exc, asyncpg.PostgresConnectionError):
                        raise
                    failed.append((ws, exc))
            for ws, error in failed:
                detail = _text(f"{type(error).__name__}: {error}"[:500])
                await conn.execute(_INSERT_REJECTION, ws.did, ws.seq, "event", "store_error", detail)
                await conn.execute(_QUEUE_RESYNC, ws.did, "store_error")
            await _finish_batch(conn, seen, cursor)
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
            "SELECT last_sequence_id, updates, sequence_ids, fetched_at FROM xmtp_inbox_logs"
            " WHERE inbox_id = $1 AND env = $2",
            inbox_id,
            env,
        )
        if row is None:
            return InboxLog(0, [], [])
        return _inbox_log(row)

    async def append_inbox_log(
        self: Store, inbox_id: str, env: str, fresh: list[tuple[int, bytes]], *, had_updates: bool
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
        self: Store,
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


async def apply_writes(conn: asyncpg.Connection, writes: Sequence[WriteSet]) -> None:
    """Apply write sets in seq order, one statement kind at a time.

    Grouping by kind gives the same result as applying event by event: identity and status
    updates keep their order within their statement, and binding writes are rev-guarded with
    revs that grow along each repo's commits, so upserts before deletes cannot resurrect a
    record a later delete removed (nor delete one a later create wrote).
    """
    created = list(dict.fromkeys(ws.did for ws in writes if ws.create_account or ws.upserts))
    if created:
        await conn.executemany(_UPSERT_ACCOUNT, [(did,) for did in created])
    identities = [(ws.did, ws.identity) for ws in writes if ws.identity is not None]
    if identities:
        await conn.executemany(_SET_IDENTITY, [(d, i.handle, i.handle_verified, i.pds) for d, i in identities])
    statuses = [(ws.did, ws.status.active, ws.status.status) for ws in writes if ws.status is not None]
    if statuses:
        await conn.executemany(_SET_STATUS, statuses)
    upserts = [
        (ws.did, b.protocol, b.uri, b.cid, b.rev, b.record, b.status, b.reason, b.xmtp_inbox_id, b.created_at)
        for ws in writes
        for b in ws.upserts
    ]
    if upserts:
        await conn.executemany(_UPSERT_BINDING, upserts)
    deletes = [(ws.did, protocol, rev) for ws in writes for protocol, rev in ws.deletes]
    if deletes:
        await conn.executemany(_DELETE_BINDING, deletes)
    repo_states = {ws.did: ws.repo_state for ws in writes if ws.repo_state is not None}  # the last one counts
    if repo_states:
        await conn.executemany(_SET_REPO_STATE, [(did, rev, data) for did, (rev, data) in repo_states.items()])
    rejections = [(ws.did, ws.seq, r.kind, r.reason, _text(r.detail)) for ws in writes for r in ws.rejections]
    if rejections:
        await conn.executemany(_INSERT_REJECTION, rejections)
    resyncs = {ws.did: ws.resync_reason for ws in writes if ws.resync_reason is not None}
    if resyncs:
        await conn.executemany(_QUEUE_RESYNC, list(resyncs.items()))


def _text(value: str | None) -> str | None:
    """Details quote the wire (paths, parser messages); PostgreSQL text cannot hold U+0000."""
    return None if value is None else value.replace("\x00", "\ufffd")


async def _drop_stale_live(
    conn: asyncpg.Connection, writes: Sequence[WriteSet]
) -> tuple[list[WriteSet], dict[str, str]]:
    """Lock the repos a batch writes bindings or repo state for, and drop what a stored proof
    (a backfill, racing the live stream) has overtaken. Returns the kept write sets and the
    stored revs that are ahead of the batch."""
    dids = sorted({ws.did for ws in writes if ws.upserts or ws.deletes or ws.repo_state})
    if not dids:
        return list(writes), {}
    stored = {r["did"]: r["rev"] for r in await conn.fetch(_LOCK_REPOS, dids) if r["rev"] is not None}
    if not stored:
        return list(writes), {}
    kept = [drop_stale(ws, stored.get(ws.did)) for ws in writes]
    newest = {ws.did: ws.repo_state[0] for ws in writes if ws.repo_state is not None}
    newer = {did: rev for did, rev in stored.items() if did in newest and rev > newest[did]}
    return kept, newer


async def _finish_batch(conn: asyncpg.Connection, seen: Mapping[str, str] | None, cursor: CursorUpdate | None) -> None:
    if seen:
        await conn.executemany(_SET_SEEN_REV, list(seen.items()))
    if cursor is not None:
        await conn.execute(_SAVE_CURSOR, cursor.upstream, cursor.seq, cursor.event_time)


# --- backfill ---
# Backfill and gap-repair state (indexer/backfill.py): candidate repos, discovery cursors,
# draining resync_queue. Results go through apply_writes, like the firehose's.

TRACKED_CHANNEL = "atmx_tracked"  # NOTIFY payload: a DID that now has an accounts row

_BACKFILL_ADD = """
INSERT INTO backfill_repos (did, source) SELECT unnest($1::text[]), $2
ON CONFLICT (did) DO NOTHING
"""

_BACKFILL_TODO = """
SELECT id, did FROM backfill_repos
WHERE state IN ('pending', 'failed') AND id > $1 AND ($3::text[] IS NULL OR did = ANY($3::text[]))
ORDER BY id LIMIT $2
"""

_BACKFILL_RESULT = """
UPDATE backfill_repos SET state = $2, error = $3, attempts = attempts + 1, updated_at = now() WHERE did = $1
"""

_RESYNC_DONE = "DELETE FROM resync_queue WHERE did = $1 AND queued_at = $2"
_RESYNC_RETRY = "UPDATE resync_queue SET attempts = attempts + 1, queued_at = now() WHERE did = $1 AND queued_at = $2"

# A failed repair waits 2^attempts seconds (capped at an hour) before the next try.
_RESYNC_DUE = """
SELECT did, reason, queued_at, attempts FROM resync_queue
WHERE queued_at + least(power(2, attempts), 3600) * interval '1 second' <= now()
ORDER BY queued_at LIMIT $1
"""

_RESYNC_ALL = """
INSERT INTO resync_queue (did, reason)
SELECT did, $1 FROM accounts UNION SELECT did, $1 FROM backfill_repos
ON CONFLICT (did) DO UPDATE SET reason = EXCLUDED.reason, queued_at = now()
"""


@dataclass(frozen=True, slots=True)
class ResyncItem:
    did: str
    reason: str
    queued_at: datetime
    attempts: int


@dataclass(frozen=True, slots=True)
class SourceState:
    cursor: str | None
    complete: bool


class BackfillStore:
    """The SQL of the backfill job and the gap-repair worker."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def add(self, dids: list[str], source: str) -> int:
        """Queue candidate repos not seen before; returns how many were new."""
        result: str = await self.pool.execute(_BACKFILL_ADD, dids, source)
        return int(result.split()[-1])

    async def source(self, key: str) -> SourceState | None:
        row = await self.pool.fetchrow("SELECT cursor, complete FROM backfill_sources WHERE source = $1", key)
        return None if row is None else SourceState(row["cursor"], row["complete"])

    async def save_page(self, key: str, dids: list[str], cursor: str | None, complete: bool) -> int:
        """One discovery page and the cursor after it, atomically (a killed job resumes at the page)."""
        async with self.pool.acquire() as conn, conn.transaction():
            result: str = await conn.execute(_BACKFILL_ADD, dids, key)
            new = int(result.split()[-1])
            await conn.execute(
                """INSERT INTO backfill_sources (source, cursor, complete, repos) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (source) DO UPDATE SET cursor = EXCLUDED.cursor, complete = EXCLUDED.complete,
                       repos = backfill_sources.repos + EXCLUDED.repos, updated_at = now()""",
                key,
                cursor,
                complete,
                new,
            )
        return new

    async def todo(self, after_id: int, limit: int, only: list[str] | None = None) -> list[tuple[int, str]]:
        rows = await self.pool.fetch(_BACKFILL_TODO, after_id, limit, only)
        return [(r["id"], r["did"]) for r in rows]

    async def counts(self, only: list[str] | None = None) -> dict[str, int]:
        rows = await self.pool.fetch(
            "SELECT state, count(*) AS n FROM backfill_repos WHERE ($1::text[] IS NULL OR did = ANY($1::text[])) "
            "GROUP BY state",
            only,
        )
        return {r["state"]: r["n"] for r in rows}

    async def reset(self, only: list[str] | None = None) -> None:
        """Start over: every repo (or the given ones) pending again, discovery from the first page."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE backfill_repos SET state = 'pending', error = NULL, attempts = 0, updated_at = now() "
                "WHERE ($1::text[] IS NULL OR did = ANY($1::text[]))",
                only,
            )
            if only is None:
                await conn.execute("DELETE FROM backfill_sources")

    async def record(
        self, ws: WriteSet | None, did: str, state: str, error: str | None, resync: ResyncItem | None = None
    ) -> None:
        """Apply one repo's verified result and mark it, atomically; the write is rev-guarded.

        Besides each binding's own rev guard, a proof older than the account's last verified
        commit is dropped: a live delete leaves no binding row to compare against, so without
        this a stale proof of presence would bring a deleted record back.
        """
        for attempt in range(3):
            try:
                await self._record(ws, did, state, error, resync)
                return
            except asyncpg.DeadlockDetectedError:  # crossed the live pipeline's locks; it retries too
                if attempt == 2:
                    raise

    async def _record(
        self, ws: WriteSet | None, did: str, state: str, error: str | None, resync: ResyncItem | None
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            if ws is not None:
                rev = await conn.fetchval("SELECT rev FROM accounts WHERE did = $1 FOR UPDATE", did)
                ws = drop_stale(ws, rev)
                await apply_writes(conn, [ws])
                if ws.create_account or ws.upserts:
                    await conn.execute("SELECT pg_notify($1, $2)", TRACKED_CHANNEL, did)
            await conn.execute(_BACKFILL_RESULT, did, state, error)
            if resync is not None:
                # a row re-queued while we fetched (new queued_at) stays for another pass
                await conn.execute(_RESYNC_DONE if state != "failed" else _RESYNC_RETRY, did, resync.queued_at)

    async def due_resyncs(self, limit: int) -> list[ResyncItem]:
        rows = await self.pool.fetch(_RESYNC_DUE, limit)
        return [ResyncItem(r["did"], r["reason"], r["queued_at"], r["attempts"]) for r in rows]

    async def resync_queue_size(self) -> int:
        n: int = await self.pool.fetchval("SELECT count(*) FROM resync_queue")
        return n

    async def queue_all(self, reason: str) -> int:
        """Queue every known candidate (indexed accounts and discovered repos) for re-fetch."""
        result: str = await self.pool.execute(_RESYNC_ALL, reason)
        return int(result.split()[-1])

    @contextlib.asynccontextmanager
    async def listen_tracked(self, on_did: Callable[[str], None]) -> AsyncIterator[None]:
        """Call `on_did` for every DID any process starts tracking, while the context is open."""

        def deliver(_conn: object, _pid: int, _channel: str, payload: object) -> None:
            on_did(str(payload))

        async def listen() -> asyncpg.Connection:
            # a connection of its own for the whole time: a LISTEN must not go back to the pool
            conn: asyncpg.Connection = await self.pool.acquire()
            try:
                await conn.add_listener(TRACKED_CHANNEL, deliver)
            except BaseException:
                await self.pool.release(conn)
                raise
            return conn

        async def relisten() -> None:
            # a database restart closes the connection and with it the LISTEN: open a new one
            while True:
                await asyncio.sleep(LISTEN_CHECK_SECONDS)
                conn = holder[0]
                if conn is not None and not _connection_lost(conn):
                    continue
                if conn is not None:
                    holder[0] = None
                    with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                        await self.pool.release(conn)
                try:
                    holder[0] = await listen()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("cannot LISTEN for tracked DIDs yet: %s", exc)

        holder: list[asyncpg.Connection | None] = [await listen()]
        keeper = asyncio.create_task(relisten())
        try:
            yield
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            conn = holder[0]
            if conn is not None:
                with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    if not _connection_lost(conn):
                        await conn.remove_listener(TRACKED_CHANNEL, deliver)
                    await self.pool.release(conn)


def _connection_lost(conn: asyncpg.Connection) -> bool:
    try:
        closed: bool = conn.is_closed()
    except asyncpg.InterfaceError:  # the pool took the connection back when it was lost
        return True
    return closed


def drop_stale(ws: WriteSet, account_rev: str | None) -> WriteSet:
    """The part of a proof-based write set that is not older than the account's last verified commit."""
    if account_rev is None:
        return ws
    return dataclasses.replace(
        ws,
        upserts=[b for b in ws.upserts if b.rev >= account_rev],
        deletes=[(p, r) for p, r in ws.deletes if r >= account_rev],
    )


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
