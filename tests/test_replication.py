"""Reads from a streaming replica: a real primary and a `pg_basebackup` replica on loopback, the API on the replica.

The servers are the pgserver wheel's own PostgreSQL binaries (initdb, pg_basebackup, pg_ctl), so CI needs
nothing more than `pip install`. As root, PostgreSQL refuses to run: the servers then run as the
`pgserver` system user that the wheel itself creates for its embedded server.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from pgserver._commands import POSTGRES_BIN_PATH  # type: ignore[import-untyped]

from atmx.indexer.config import Settings
from atmx.indexer.service import open_database, read_pool, serve

pytestmark = [pytest.mark.db, pytest.mark.subprocess]  # a primary and a replica PostgreSQL of its own

DID = "did:plc:" + "r" * 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _as_postgres_user() -> dict[str, Any]:
    """subprocess kwargs that run a server binary as a non-root user when we are root."""
    if os.geteuid() != 0:
        return {}
    from pgserver.utils import ensure_user_exists  # type: ignore[import-untyped]

    ensure_user_exists("pgserver")
    return {"user": "pgserver"}


def _pg(binary: str, *args: str) -> None:
    exe = POSTGRES_BIN_PATH / binary
    if not exe.exists():
        raise AssertionError(f"{exe} missing: the pgserver wheel should ship {binary}")
    done = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120, **_as_postgres_user())
    if done.returncode != 0:
        raise AssertionError(f"{binary} {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


@dataclass
class Server:
    data: Path
    port: int

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def configure(self, **settings: str) -> None:
        with (self.data / "postgresql.conf").open("a") as conf:
            for key, value in settings.items():
                conf.write(f"{key} = '{value}'\n")

    def start(self) -> None:
        _pg("pg_ctl", "-D", str(self.data), "-l", str(self.data.parent / f"{self.data.name}.log"), "-w", "start")

    def stop(self) -> None:
        _pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")


@pytest.fixture(scope="module")
def replicated() -> Iterator[tuple[Server, Server]]:
    """A primary and its streaming replica, both on 127.0.0.1."""
    tmp = Path(tempfile.mkdtemp(prefix="atmx-repl-"))
    if os.geteuid() == 0:
        _as_postgres_user()
        shutil.chown(tmp, "pgserver", "pgserver")
    primary = Server(tmp / "primary", _free_port())
    replica = Server(tmp / "replica", _free_port())
    common = {"listen_addresses": "127.0.0.1", "unix_socket_directories": str(tmp), "fsync": "off"}
    started: list[Server] = []
    try:
        # initdb's default pg_hba.conf trusts replication connections from 127.0.0.1
        _pg("initdb", "-D", str(primary.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        primary.configure(port=str(primary.port), wal_level="replica", max_wal_senders="4", **common)
        primary.start()
        started.append(primary)
        _pg(
            "pg_basebackup",
            *("-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres"),
            *("-D", str(replica.data), "-X", "stream", "-R", "--no-sync"),
        )
        assert (replica.data / "standby.signal").exists()
        replica.configure(port=str(replica.port), hot_standby="on", **common)
        replica.start()
        started.append(replica)
        yield primary, replica
    finally:
        for server in reversed(started):
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def _replayed(primary: Server, replica: Server, patience: float = 10.0) -> None:
    """Wait until the replica has replayed everything the primary has written so far."""
    p = await asyncpg.connect(primary.dsn)
    r = await asyncpg.connect(replica.dsn)
    try:
        target = await p.fetchval("SELECT pg_current_wal_lsn()")
        deadline = time.monotonic() + patience
        while await r.fetchval("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", target) is not True:
            if time.monotonic() > deadline:
                raise AssertionError("the replica did not replay the primary's writes in time")
            await asyncio.sleep(0.02)
    finally:
        await p.close()
        await r.close()


async def _put_binding(primary: Server, cid: str) -> None:
    conn = await asyncpg.connect(primary.dsn)
    try:
        await conn.execute("INSERT INTO accounts (did) VALUES ($1) ON CONFLICT DO NOTHING", DID)
        await conn.execute(
            """INSERT INTO bindings (did, protocol, collection, rkey, uri, cid, rev, record, status, xmtp_inbox_id,
                                     created_at)
               VALUES ($1, 'xmtp', 'org.xmtp.inbox', 'self', $2, $3, '3kaaaaaaaaa22', $4::jsonb, 'pending', $5,
                       '2026-01-01T00:00:00Z')
               ON CONFLICT (uri) DO UPDATE SET cid = EXCLUDED.cid""",
            DID,
            f"at://{DID}/org.xmtp.inbox/self",
            cid,
            '{"id": "' + "ab" * 32 + '", "verificationSignature": "x", "createdAt": "2026-01-01T00:00:00Z"}',
            "ab" * 32,
        )
    finally:
        await conn.close()


@pytest.fixture
async def api_on_replica(replicated: tuple[Server, Server]) -> AsyncIterator[str]:
    """`atmx serve` as the CLI runs it, writing schema to the primary and reading from the replica."""
    primary, replica = replicated
    port = _free_port()
    settings = Settings(database_url=primary.dsn, database_read_url=replica.dsn, listen=f"127.0.0.1:{port}")
    task = asyncio.ensure_future(serve(settings, index=False, api=True))
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 30
        while True:
            if task.done():
                task.result()
            try:
                async with http.get(f"{url}/xrpc/_health") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            assert time.monotonic() < deadline, "atmx serve did not come up"
            await asyncio.sleep(0.1)
    try:
        yield url
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _shown_cid(url: str) -> str | None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}/xrpc/directory.atmx.getIdentity", params={"actor": DID}) as resp,
    ):
        body = await resp.json()
        return body.get("xmtp", {}).get("cid") if resp.status == 200 else None


async def test_the_api_answers_from_the_replica(replicated: tuple[Server, Server], api_on_replica: str) -> None:
    primary, replica = replicated
    await _put_binding(primary, "bafyfirst")
    await _replayed(primary, replica)
    assert await _shown_cid(api_on_replica) == "bafyfirst"

    # Pause the replica's replay: a write on the primary must stay invisible to the API
    # until the replica applies it, which proves the API reads from the replica.
    admin = await asyncpg.connect(replica.dsn)
    try:
        await admin.execute("SELECT pg_wal_replay_pause()")
        await _put_binding(primary, "bafysecond")
        await asyncio.sleep(0.5)
        assert await _shown_cid(api_on_replica) == "bafyfirst"
        await admin.execute("SELECT pg_wal_replay_resume()")
    finally:
        await admin.close()
    await _replayed(primary, replica)
    assert await _shown_cid(api_on_replica) == "bafysecond"

    # and the replica is a real hot standby: it refuses writes
    conn = await asyncpg.connect(replica.dsn)
    try:
        assert await conn.fetchval("SELECT pg_is_in_recovery()") is True
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("DELETE FROM bindings")
    finally:
        await conn.close()


async def test_without_a_read_url_the_api_reads_the_primary(replicated: tuple[Server, Server]) -> None:
    primary, _ = replicated
    async with open_database(Settings(database_url=primary.dsn)) as db, read_pool(Settings(), db) as pool:
        assert pool is db.pool


def test_the_read_url_comes_from_the_environment() -> None:
    from atmx.indexer.config import from_env

    replica = "postgresql://atmx@replica.example:5432/atmx"
    assert from_env({"ATMX_DATABASE_READ_URL": replica}).database_read_url == replica
    assert from_env({}).database_read_url is None
