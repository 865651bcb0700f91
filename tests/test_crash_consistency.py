"""Crash consistency: `kill -9` a real `atmx index` at random moments, restart it, and the final index
is identical to the one an uninterrupted run builds from the same stream.

The stream is a backlog written once per session through the reference PDS (both record kinds,
creates, updates, deletes, other collections, deactivate/activate, handle changes, takedowns).
Each run gets a fresh database whose cursor is set just before the backlog, so every run replays
exactly the same events. The XMTP stage talks to a loopback node that knows no inbox, so every
XMTP binding ends `invalid/inbox_not_found` deterministically.

CI replays a small backlog in 10 trials; `ATMX_LONG=1` writes a longer one and runs 25 trials. Each
trial also follows the change stream from cursor 0 through the real API: the state a consumer rebuilds
equals what listBindings serves.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import libipld
import pytest
from aiohttp.test_utils import TestServer
from crash_backlog import Backlog, cursor_of, dump_index, fresh_database, settled, write_backlog
from devnet_harness import Devnet
from xmtp_node import XmtpNode

from atmx.api.app import create_app
from atmx.indexer.records.registry import PROTOCOLS
from atmx.indexer.store.database import create_pool

pytestmark = [pytest.mark.slow, pytest.mark.devnet]

LONG = os.environ.get("ATMX_LONG") == "1"
ACCOUNTS = 24 if LONG else 10
ROUNDS = 120 if LONG else 30  # one applyWrites (one commit) per account per round
TRIALS = 25 if LONG else 10
RUN_TIMEOUT = 300.0 if LONG else 120.0


# --- running atmx ---


def atmx_env(devnet: Devnet, dsn: str, xmtp_url: str, data_dir: Path, *, relay: str | None = None,
             plc: str | None = None) -> dict[str, str]:  # fmt: skip
    return {
        **os.environ,
        "ATMX_DATABASE_URL": dsn,
        "ATMX_RELAY": relay or devnet.firehose_url,
        "ATMX_PLC_URL": plc or devnet.plc_url,
        "ATMX_HANDLE_RESOLVER": devnet.pds_url,
        "ATMX_ALLOW_INSECURE_HTTP": "1",
        "ATMX_XMTP_API": f"production={xmtp_url}",
        "ATMX_DATA_DIR": str(data_dir),
        "ATMX_STALL_TIMEOUT": "3600",
    }


def start_atmx(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "atmx.indexer.cli", "index"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


async def wait_settled(pool: asyncpg.Pool, backlog: Backlog, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT
    while not await settled(pool, backlog):
        assert proc.poll() is None, f"atmx exited with {proc.returncode}:\n{tail(log)}"
        assert time.monotonic() < deadline, f"not settled after {RUN_TIMEOUT}s:\n{tail(log)}"
        await asyncio.sleep(0.1)


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def summary(pool: asyncpg.Pool) -> str:
    rejected = await pool.fetch("SELECT kind, reason, count(*) AS n FROM rejections GROUP BY 1, 2")
    resyncs = await pool.fetch("SELECT reason, attempts, count(*) AS n FROM resync_queue GROUP BY 1, 2")
    repairs = await pool.fetch("SELECT state, error, count(*) FROM backfill_repos GROUP BY 1, 2")
    rows = {"rejections": rejected, "resyncs": resyncs, "repairs": repairs}
    return ", ".join(f"{k} {[tuple(r) for r in v]}" for k, v in rows.items())


def diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    lines = []
    for table in ("accounts", "bindings"):
        left = {tuple(sorted(r.items())) for r in a[table]}
        right = {tuple(sorted(r.items())) for r in b[table]}
        lines += [f"{table} only in reference: {r}" for r in sorted(left - right)]
        lines += [f"{table} only in trial: {r}" for r in sorted(right - left)]
    return "\n".join(lines[:20])


# --- a consumer of the change stream ---


async def consumer_state(pool: asyncpg.Pool) -> tuple[set[tuple[str, str, str]], set[tuple[str, str, str]]]:
    """What a consumer that followed subscribeBindings from cursor 0 knows, and what listBindings
    serves, both as (uri, cid, status) of the bindings of visible accounts, through the real API."""
    head = int(await pool.fetchval("SELECT coalesce(max(seq), 0) FROM changes"))
    bindings: dict[str, tuple[str, str, str]] = {}
    status: dict[str, str] = {}
    async with TestServer(create_app(pool_provider=lambda: pool, version="test")) as server:
        async with aiohttp.ClientSession() as http:
            url = server.make_url("/xrpc/directory.atmx.subscribeBindings")
            async with http.ws_connect(url, params={"cursor": "0"}) as ws:
                seq = 0
                while seq < head:
                    msg = await ws.receive(timeout=10)
                    assert msg.type == aiohttp.WSMsgType.BINARY, msg
                    header, body = libipld.decode_dag_cbor_multi(msg.data)
                    assert header["op"] == 1, body
                    seq = body["seq"]
                    if header["t"] == "#account":
                        status[body["did"]] = body["accountStatus"]
                    elif header["t"] == "#binding" and body["action"] == "delete":
                        bindings.pop(body["uri"], None)
                    elif header["t"] == "#binding":
                        bindings[body["uri"]] = (body["did"], body["cid"], body["status"])
            listed: set[tuple[str, str, str]] = set()
            for protocol in PROTOCOLS:
                cursor: str | None = None
                while True:
                    params = {"protocol": protocol, "limit": "1000"} | ({"cursor": cursor} if cursor else {})
                    async with http.get(server.make_url("/xrpc/directory.atmx.listBindings"), params=params) as resp:
                        page = await resp.json()
                    listed |= {(b["uri"], b["cid"], b["status"]) for b in page["bindings"]}
                    cursor = page.get("cursor")
                    if not cursor:
                        break
    followed = {(uri, cid, st) for uri, (did, cid, st) in bindings.items() if status.get(did, "active") == "active"}
    return followed, listed


# --- fixtures ---


@pytest.fixture(scope="session")
async def backlog(devnet: Devnet) -> Backlog:
    return await write_backlog(devnet, accounts=ACCOUNTS, rounds=ROUNDS)


@pytest.fixture(scope="session")
def xmtp_node() -> Iterator[XmtpNode]:
    with XmtpNode() as node:
        yield node


@pytest.fixture(scope="session")
async def reference(
    devnet: Devnet, backlog: Backlog, pg_server_dsn: str, xmtp_node: XmtpNode, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The index an uninterrupted `atmx index` builds from the backlog."""
    tmp = tmp_path_factory.mktemp("atmx-reference")
    async with fresh_database(pg_server_dsn, backlog.start_cursor, devnet.firehose_url) as dsn:
        pool = await create_pool(dsn, max_size=2)
        log = tmp / "atmx.log"
        proc = start_atmx(atmx_env(devnet, dsn, xmtp_node.url, tmp), log)
        try:
            await wait_settled(pool, backlog, proc, log)
            print(f"reference run: {await summary(pool)}")
            return await dump_index(pool, backlog.dids)
        finally:
            stop(proc)
            await pool.close()


# --- the tests ---


async def test_backlog_is_rich_enough(backlog: Backlog, reference: dict[str, Any]) -> None:
    """The reference index exercises what the trials must reproduce."""
    statuses = {(b["protocol"], b["status"], b["reason"]) for b in reference["bindings"]}
    assert ("xmtp", "invalid", "inbox_not_found") in statuses
    assert ("didcomm", "valid", None) in statuses
    assert {a["status"] for a in reference["accounts"]} >= {None, "takendown", "deactivated"}
    assert len(reference["accounts"]) >= ACCOUNTS - 1
    assert {"handle change", "deactivate/activate"} <= set(backlog.account_changes)
    seqs = f"seq {backlog.start_cursor + 1}..{backlog.end_seq}"
    print(f"backlog: {backlog.events} events, {seqs}, {backlog.account_changes}")


@pytest.mark.parametrize("trial", range(TRIALS))
async def test_kill_9_and_restart_gives_the_same_index(
    trial: int,
    devnet: Devnet,
    backlog: Backlog,
    reference: dict[str, Any],
    pg_server_dsn: str,
    xmtp_node: XmtpNode,
    tmp_path: Path,
) -> None:
    rng = random.Random(1000 + trial)
    span = backlog.end_seq - backlog.start_cursor
    # 1-3 kill points per trial: a cursor position inside the backlog, or (one trial in four) a
    # moment shortly after start, before or during the schema/cursor load
    kills = sorted(backlog.start_cursor + rng.randrange(1, span) for _ in range(rng.randint(1, 3)))
    early = rng.random() < 0.25
    # atmx takes the whole backlog in well under a second and saves its cursor once per batch, so
    # an unbounded run would be killed only after the end. A small in-flight bound (back-pressure,
    # as a slow database causes) spreads the batches over the stream: each kill then lands with
    # events received and processed but not yet written, and a batch's size varies by trial.
    # (the long backlog is 9x longer: smaller bounds would make a trial take many minutes)
    in_flight = rng.choice((16, 64, 256, 1024) if LONG else (1, 4, 16, 64))
    async with fresh_database(pg_server_dsn, backlog.start_cursor, devnet.firehose_url) as dsn:
        pool = await create_pool(dsn, max_size=2)
        env = atmx_env(devnet, dsn, xmtp_node.url, tmp_path) | {"ATMX_MAX_IN_FLIGHT": str(in_flight)}
        log = tmp_path / "atmx.log"
        killed_at: list[int] = []
        try:
            if early:
                proc = start_atmx(env, log)
                await asyncio.sleep(rng.uniform(0.2, 2.0))
                stop(proc, signal.SIGKILL)
                killed_at.append(await cursor_of(pool))
            for point in kills:
                proc = start_atmx(env, log)
                deadline = time.monotonic() + RUN_TIMEOUT
                while await cursor_of(pool) < point and proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                assert proc.poll() is None, f"atmx exited early:\n{tail(log)}"
                stop(proc, signal.SIGKILL)
                killed_at.append(await cursor_of(pool))
            proc = start_atmx(env, log)
            try:
                await wait_settled(pool, backlog, proc, log)
                got = await dump_index(pool, backlog.dids)
                print(f"trial {trial}: {await summary(pool)}")
            finally:
                stop(proc)
            # the change log survived the kills too: a consumer rebuilds exactly what is served
            followed, listed = await consumer_state(pool)
        finally:
            await pool.close()
    print(
        f"trial {trial}: in flight <= {in_flight}, aimed at {kills}, killed at cursor {killed_at}"
        f" of {backlog.start_cursor}..{backlog.end_seq}"
    )
    assert got == reference, diff(reference, got) + "\n" + tail(log)
    assert listed and followed == listed, (sorted(followed - listed)[:5], sorted(listed - followed)[:5])
