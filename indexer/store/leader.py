"""Active/standby indexers: a PostgreSQL session-level advisory lock decides which one indexes.

The lock lives on a dedicated connection, so it is held exactly as long as that session
lives: when the active process dies its session ends, PostgreSQL frees the lock, and a
standby polling with `pg_try_advisory_lock` takes over from the saved cursor. If the
active process loses its lock connection (network, server restart, a terminated
backend) it can no longer prove it holds the lock, so it stops indexing at once and
stands by again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg

from atmx.indexer import metrics
from atmx.indexer.store.errors import TRANSIENT_DB_ERRORS

log = logging.getLogger(__name__)

# One lock per database: "atmx" "idx" (fits a signed bigint; the schema lock uses "atmx" alone).
LEADER_LOCK_KEY = 0x61746D78_00697878
APPLICATION_NAME_PREFIX = "atmx-indexer"

# any statement error on the lock's own session means the session cannot be trusted to hold it
_DB_ERRORS = (*TRANSIENT_DB_ERRORS, asyncpg.PostgresError)

# Whether this very backend holds the lock, read from pg_locks rather than trusted: behind a
# transaction-mode pooler a "session" lock would silently belong to some other backend.
_HOLDS_LOCK = """
SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted AND objsubid = 1
      AND ((classid::bigint << 32) | objid::bigint) = $1
)
"""


class LeadershipLost(RuntimeError):
    """The lock connection failed: this process can no longer prove it is the active indexer."""


def application_name() -> str:
    """Names the lock session in pg_stat_activity, so operators (and tests) see who is active."""
    return f"{APPLICATION_NAME_PREFIX} {socket.gethostname()} pid={os.getpid()}"[:63]


@dataclass
class LeaderLock:
    dsn: str
    key: int = LEADER_LOCK_KEY
    poll_interval: float = 1.0  # how often a standby asks for the lock
    check_interval: float = 1.0  # how often the holder re-checks its lock session
    timeout: float = 3.0  # one connect or check; beyond it the session counts as lost
    # After losing the lock, wait this long before asking again: a process whose lock session
    # just failed is the suspect one, so a healthy standby gets the first chance to take over.
    demoted_holdoff: float = 5.0
    _conn: asyncpg.Connection | None = field(default=None, init=False, repr=False)

    async def acquire(self) -> None:
        """Return once this process holds the lock; standing by, polling, until then."""
        waiting_logged = False
        while True:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(
                        self.dsn, timeout=self.timeout, server_settings={"application_name": application_name()}
                    )
                got = await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key, timeout=self.timeout)
                metrics.DATABASE_UP.set(1)
            except _DB_ERRORS as exc:
                metrics.DATABASE_UP.set(0)
                log.warning("indexer lock: database unreachable: %s", exc)
                await self.release()
            else:
                if got:
                    metrics.INDEXER_ACTIVE.set(1)
                    return
                if not waiting_logged:
                    log.info("another indexer is active; standing by")
                    waiting_logged = True
            await asyncio.sleep(self.poll_interval)

    async def watch(self) -> None:
        """While the lock is held, return only by raising LeadershipLost."""
        conn = self._conn
        if conn is None:
            raise LeadershipLost("the lock is not held")
        closed = asyncio.Event()
        conn.add_termination_listener(lambda _conn: closed.set())
        while True:
            # A closed socket is noticed at once; a silent network through the periodic check.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.check_interval):
                    await closed.wait()
            if closed.is_set():
                self._lost()
                raise LeadershipLost("the lock connection closed")
            try:
                held = await conn.fetchval(_HOLDS_LOCK, self.key, timeout=self.timeout)
            except _DB_ERRORS as exc:
                self._lost()
                raise LeadershipLost(f"the lock connection failed: {exc}") from exc
            metrics.DATABASE_UP.set(1)
            if not held:
                self._lost()
                raise LeadershipLost("the session no longer holds the lock (a transaction-mode pooler?)")

    def _lost(self) -> None:
        metrics.INDEXER_ACTIVE.set(0)
        metrics.DATABASE_UP.set(0)

    async def release(self) -> None:
        """Give the lock up by ending its session."""
        conn, self._conn = self._conn, None
        metrics.INDEXER_ACTIVE.set(0)
        if conn is not None and not conn.is_closed():
            try:
                async with asyncio.timeout(self.timeout):
                    await conn.close()
            except _DB_ERRORS:
                conn.terminate()


async def lead(lock: LeaderLock, work: Callable[[], Awaitable[None]]) -> None:
    """Run `work` only while holding `lock`; on losing it, cancel `work` at once and stand by again.

    `work` starts from scratch each term (it must reload the saved cursor). Returns when
    `work` returns; an exception from `work` propagates, releasing the lock.
    """
    try:
        while True:
            await lock.acquire()
            log.info("this indexer is now the active one")
            term = asyncio.ensure_future(work())
            watch = asyncio.ensure_future(lock.watch())
            try:
                await asyncio.wait({term, watch}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (term, watch):
                    task.cancel()
                await asyncio.gather(term, watch, return_exceptions=True)
            if term.done() and not term.cancelled():
                term.result()  # raises the work's own error
                return
            error = watch.exception() if watch.done() and not watch.cancelled() else None
            if not isinstance(error, LeadershipLost):
                raise error or LeadershipLost("lock watch stopped")
            log.error("lost the indexer lock (%s); stopped indexing, standing by", error)
            await lock.release()
            await asyncio.sleep(lock.demoted_holdoff)
    finally:
        await lock.release()
