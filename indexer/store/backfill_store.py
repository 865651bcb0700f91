"""The SQL of the backfill job and the gap-repair worker: candidate repos, discovery cursors and
the resync queue. Their results go through index_store.apply_writes, like the firehose's."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from atmx.indexer.index.writes import WriteSet
from atmx.indexer.store.apply import apply_writes

log = logging.getLogger(__name__)

LISTEN_CHECK_SECONDS = 2.0  # how soon a LISTEN lost to a database restart is re-established

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

STALE_PROOF = "stale_proof"  # resync reason: a proof older than the stored rev disagrees with the index

# Queued again at once the first time; a repo whose proofs keep coming back older than its stored
# rev (an account writing all the time, a PDS serving a stale view) backs off like a failed repair.
_QUEUE_STALE_PROOF = """
INSERT INTO resync_queue (did, reason) VALUES ($1, $2)
ON CONFLICT (did) DO UPDATE SET reason = EXCLUDED.reason, queued_at = now(),
    attempts = resync_queue.attempts + (resync_queue.reason = EXCLUDED.reason)::int
"""

# A new entry is due at once; a failed repair waits 2^attempts seconds (capped at an hour).
_RESYNC_DUE = """
SELECT did, reason, queued_at, attempts FROM resync_queue
WHERE attempts = 0 OR queued_at + least(power(2, attempts), 3600) * interval '1 second' <= now()
ORDER BY queued_at LIMIT $1
"""

_RESYNC_ALL = """
INSERT INTO resync_queue (did, reason)
SELECT did, $1 FROM accounts UNION SELECT did, $1 FROM backfill_repos
ON CONFLICT (did) DO UPDATE SET reason = EXCLUDED.reason, queued_at = now()
"""


async def _disagrees(conn: asyncpg.Connection, ws: WriteSet) -> bool:
    """Whether the index, as now written, still differs from a proof fetch on a record whose row
    is not newer than the proof: a record proven present that has no row or an older other
    version, or a record proven absent that still has an older row."""
    rows = {
        r["uri"]: (r["cid"], r["rev"])
        for r in await conn.fetch("SELECT uri, cid, rev FROM bindings WHERE did = $1", ws.did)
    }
    for row in ws.upserts:
        held = rows.get(row.uri)
        if held is None or (held[0] != row.cid and held[1] < row.rev):
            return True
    for delete in ws.deletes:
        held = rows.get(f"at://{ws.did}/{delete.path}")
        if held is not None and held[1] < delete.rev:
            return True
    return False


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
    ) -> bool:
        """Apply one repo's verified result and mark it, atomically; the write is rev-guarded.
        Returns True when the repo was queued for another fetch (STALE_PROOF).

        Besides each binding's own rev guard, a proof older than the account's last verified
        commit is dropped: a live delete leaves no binding row to compare against, so without
        this a stale proof of presence would bring a deleted record back. But the commits that
        moved that rev may chain from a state that was never complete (a new account's first
        commit, a commit after a gap), so a record they did not touch may still be wrong: when
        the dropped proof still disagrees with the index, the repo is fetched again, and the
        next proof is at least as new as the stored rev.
        """
        for attempt in range(3):
            try:
                return await self._record(ws, did, state, error, resync)
            except asyncpg.DeadlockDetectedError:  # crossed the live pipeline's locks; it retries too
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _record(
        self, ws: WriteSet | None, did: str, state: str, error: str | None, resync: ResyncItem | None
    ) -> bool:
        requeued = False
        async with self.pool.acquire() as conn, conn.transaction():
            if ws is not None:
                newer = await apply_writes(conn, [ws], datetime.now(UTC))
                if ws.create_account or ws.upserts:
                    await conn.execute("SELECT pg_notify($1, $2)", TRACKED_CHANNEL, did)
                if did in newer and await _disagrees(conn, ws):
                    # queued_at changes, so the row outlives the _RESYNC_DONE below
                    await conn.execute(_QUEUE_STALE_PROOF, did, STALE_PROOF)
                    requeued = True
            await conn.execute(_BACKFILL_RESULT, did, state, error)
            if resync is not None:
                # a row re-queued while we fetched (new queued_at) stays for another pass
                await conn.execute(_RESYNC_DONE if state != "failed" else _RESYNC_RETRY, did, resync.queued_at)
        return requeued

    async def known_rkeys(self, did: str, collection: str) -> list[str]:
        """The record keys the index holds for an account's collection (each is re-proven)."""
        rows = await self.pool.fetch("SELECT rkey FROM bindings WHERE did = $1 AND collection = $2", did, collection)
        return [r["rkey"] for r in rows]

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
