"""Active/standby indexers on a PostgreSQL advisory lock: the lock itself, then two real `atmx index` processes."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from devnet_harness import Account, Devnet, PdsClient
from metric_samples import sample
from sample_records import keypackage_record, xmtp_record

from atmx.indexer import metrics
from atmx.indexer.store.leader import APPLICATION_NAME_PREFIX, LeaderLock, LeadershipLost, lead

FAST = {"poll_interval": 0.05, "check_interval": 0.05, "timeout": 2.0, "demoted_holdoff": 1.0}


async def eventually(what: str, check: Callable[[], Awaitable[bool]], patience: float = 10.0) -> None:
    deadline = time.monotonic() + patience
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def lock_holders(dsn: str) -> list[str]:
    """application_name of every session holding the indexer lock (the operator's query)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE $1"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            APPLICATION_NAME_PREFIX + "%",
        )
    finally:
        await conn.close()
    return [r["application_name"] for r in rows]


async def test_one_holder_at_a_time_and_the_standby_takes_over(db_dsn: str) -> None:
    first, second = LeaderLock(db_dsn, **FAST), LeaderLock(db_dsn, **FAST)
    await asyncio.wait_for(first.acquire(), 5)
    assert sample("atmx_indexer_active") == 1
    standby = asyncio.ensure_future(second.acquire())
    await asyncio.sleep(0.5)  # ten polls
    assert not standby.done(), "the standby got the lock while it was held"
    assert len(await lock_holders(db_dsn)) == 1
    await first.release()
    await asyncio.wait_for(standby, 5)
    assert len(await lock_holders(db_dsn)) == 1
    await second.release()
    assert await lock_holders(db_dsn) == []


async def test_losing_the_lock_connection_stops_the_work_at_once(db_dsn: str) -> None:
    lock, rival = LeaderLock(db_dsn, **FAST), LeaderLock(db_dsn, **FAST)
    terms: list[str] = []
    stopped = asyncio.Event()

    async def work() -> None:
        terms.append("start")
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    leader = asyncio.ensure_future(lead(lock, work))
    try:
        await eventually("the first term", lambda: _true(terms == ["start"]))
        assert lock._conn is not None
        pid = lock._conn.get_server_pid()
        admin = await asyncpg.connect(db_dsn)
        try:
            rival_task = asyncio.ensure_future(rival.acquire())
            # the server ends the lock session: the lock is gone, and so must the work be
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
            started = time.monotonic()
            await asyncio.wait_for(stopped.wait(), 5)
            print(f"work stopped {time.monotonic() - started:.3f}s after the lock session ended")
            await asyncio.wait_for(rival_task, 5)  # the standby took over
        finally:
            await admin.close()
        assert sample("atmx_indexer_active") in (0, 1)  # shared process-wide gauge; rival holds now
        assert not leader.done(), "a process that lost the lock stands by again"
        await asyncio.sleep(0.3)
        assert terms == ["start"], "the demoted process must not index while the rival holds the lock"
        await rival.release()
        await eventually("the second term", lambda: _true(terms == ["start", "start"]))
    finally:
        leader.cancel()
        await asyncio.gather(leader, return_exceptions=True)
        await rival.release()
    assert await lock_holders(db_dsn) == []


async def test_work_errors_propagate_and_release_the_lock(db_dsn: str) -> None:
    async def broken() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await lead(LeaderLock(db_dsn, **FAST), broken)
    assert await lock_holders(db_dsn) == []

    async def done() -> None:
        return None

    await asyncio.wait_for(lead(LeaderLock(db_dsn, **FAST), done), 5)
    assert await lock_holders(db_dsn) == []


async def test_watch_without_the_lock_and_an_unreachable_database() -> None:
    with pytest.raises(LeadershipLost):
        await LeaderLock("postgresql://nobody@127.0.0.1:9/x").watch()
    # a closed loopback port: the standby keeps polling and reports the database down
    metrics.DATABASE_UP.set(1)
    lock = LeaderLock("postgresql://nobody@127.0.0.1:9/x", poll_interval=0.05, timeout=0.5)
    waiting = asyncio.ensure_future(lock.acquire())
    await asyncio.sleep(0.5)
    assert not waiting.done()
    assert sample("atmx_database_up") == 0
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)


async def _true(value: bool) -> bool:
    return value


# --- two real `atmx index` processes against the loopback firehose ---


class IndexerProcess:
    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "atmx.indexer.cli", "index", "--log-level", "INFO"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def spawn(devnet: Devnet, db_dsn: str, tmp_path: Path) -> Iterator[Callable[[str], IndexerProcess]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATMX_")}
    env.update(
        ATMX_DATABASE_URL=db_dsn,
        ATMX_RELAY=devnet.firehose_url,
        ATMX_PLC_URL=devnet.plc_url,
        ATMX_HANDLE_RESOLVER=devnet.pds_url,
        ATMX_ALLOW_INSECURE_HTTP="1",
        ATMX_STALL_TIMEOUT="3600",
        # nothing listens there: XMTP checks stay unverifiable, and nothing leaves loopback
        ATMX_XMTP_API="dev=http://127.0.0.1:9",
    )
    started: list[IndexerProcess] = []

    def start(name: str) -> IndexerProcess:
        process = IndexerProcess(name, env, tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


async def active_pid(dsn: str) -> int | None:
    holders = await lock_holders(dsn)
    assert len(holders) <= 1, holders
    return int(holders[0].rsplit("pid=", 1)[1]) if holders else None


@pytest.mark.devnet
async def test_kill_the_active_indexer_and_the_standby_continues(
    spawn: Callable[[str], IndexerProcess], pds: PdsClient, db_pool: asyncpg.Pool, db_dsn: str
) -> None:
    rounds = 6 if os.environ.get("ATMX_LONG") else 2
    a = spawn("a")
    await eventually("indexer a active", lambda: _is(active_pid(db_dsn), a.proc.pid), 60)
    b = spawn("b")
    await eventually("indexer b standing by", lambda: _logged(b, "standing by"), 60)
    assert await active_pid(db_dsn) == a.proc.pid

    accounts: list[Account] = [await pds.create_account(f"ha{secrets.token_hex(4)}.test") for _ in range(3)]
    expected: dict[tuple[str, str], str] = {}  # (did, protocol) -> cid of the last write

    async def write_round() -> None:
        for account in accounts:
            _, cid = await pds.put_record(account, "org.xmtp.inbox", "self", xmtp_record())
            expected[(account.did, "xmtp")] = cid
            _, cid = await pds.put_record(account, "at.didcomm.keyPackage", "self", keypackage_record())
            expected[(account.did, "didcomm")] = cid

    async def indexed() -> bool:
        rows = await db_pool.fetch("SELECT did, protocol, cid FROM bindings")
        return {(r["did"], r["protocol"]): r["cid"] for r in rows} == expected

    for _ in range(rounds):
        await write_round()
    await eventually("a indexed the first writes", indexed, 30)
    cursor_before = await db_pool.fetchval("SELECT seq FROM cursors")

    # kill -9 the active indexer mid-stream: writes keep coming before, during and after the takeover
    writer = asyncio.ensure_future(_rounds(write_round, rounds))
    await asyncio.sleep(0.2)
    a.proc.kill()
    a.proc.wait(10)
    killed_at = time.monotonic()
    await writer
    await eventually("b active", lambda: _is(active_pid(db_dsn), b.proc.pid), 30)
    print(f"standby active {time.monotonic() - killed_at:.2f}s after kill -9")
    for _ in range(rounds):  # strictly after the kill
        await write_round()
    try:
        await eventually("b indexed every write", indexed, 30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; b's log:\n{b.tail()}") from None

    assert b.proc.poll() is None
    # no gap: a missed commit would break the since/prevData chain and queue a resync (new accounts
    # are queued too, for their first proof fetch: those drain)
    gaps = await db_pool.fetchval("SELECT count(*) FROM resync_queue WHERE reason <> 'new_account'")
    assert gaps == 0

    async def drained() -> bool:
        return bool(await db_pool.fetchval("SELECT count(*) FROM resync_queue") == 0)

    await eventually("the first proof fetches done", drained, 30)
    assert await db_pool.fetchval("SELECT count(*) FROM rejections") == 0
    for account in accounts:  # every account's verified rev is the PDS's latest: every commit applied in order
        latest = await pds.query("com.atproto.sync.getLatestCommit", {"did": account.did})
        assert await db_pool.fetchval("SELECT rev FROM accounts WHERE did = $1", account.did) == latest["rev"]
    # no duplicate: one row per binding, one cursor, moved on past the takeover
    assert await db_pool.fetchval("SELECT count(*) FROM bindings") == len(expected) == 2 * len(accounts)
    assert await db_pool.fetchval("SELECT count(*) FROM cursors") == 1
    assert await db_pool.fetchval("SELECT seq FROM cursors") > cursor_before


async def _rounds(step: Callable[[], Awaitable[None]], n: int) -> None:
    for _ in range(n):
        await step()


async def _is(value: Awaitable[int | None], expected: int) -> bool:
    return await value == expected


async def _logged(process: IndexerProcess, text: str) -> bool:
    if process.proc.poll() is not None:
        raise AssertionError(f"{process.name} exited: {process.tail()}")
    return text in process.log.read_text(errors="replace")


async def test_watch_notices_a_session_that_no_longer_holds_the_lock(db_dsn: str) -> None:
    # what a transaction-mode pooler would do: the "session" is not the one that took the lock
    lock = LeaderLock(db_dsn, **FAST)
    await lock.acquire()
    assert lock._conn is not None
    assert await lock._conn.fetchval("SELECT pg_advisory_unlock($1)", lock.key)
    with pytest.raises(LeadershipLost, match="no longer holds"):
        await asyncio.wait_for(lock.watch(), 5)
    assert sample("atmx_indexer_active") == 0
    await lock.release()
