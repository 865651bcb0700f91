"""Upstream faults, end to end: the whole indexer (stream, pipeline, gap repair, XMTP stage) against
the reference PDS and PLC, with the firehose, the PLC and the XMTP node misbehaving on purpose.

Each time atmx must recover by itself, count the fault in a metric, and end with the index it
would have built without the fault (or, when something could not be verified, verify it later).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import libipld
import pytest
import websockets
from crash_backlog import XMTP, Backlog, dump_index, fresh_database, inbox_record, settled, write_backlog
from devnet_harness import Devnet, PdsClient
from faultproxy import FaultProxy
from indexer_runner import running, settings_for, until
from metric_samples import sample
from prometheus_client import REGISTRY
from websockets.asyncio.server import ServerConnection, serve
from xmtp_node import XmtpNode

from atmx.indexer.firehose import stream as stream_mod
from atmx.indexer.store.database import create_pool
from atmx.indexer.xmtp import verifier as verifier_mod

pytestmark = [pytest.mark.slow, pytest.mark.devnet]

GARBAGE_JSON = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 9\r\n\r\n{not json"


def xmtp_api_errors() -> float:
    """All XMTP call failures, whatever the environment and reason."""
    return sum(
        s.value
        for m in REGISTRY.collect()
        if m.name == "atmx_xmtp_api_errors"
        for s in m.samples
        if s.name.endswith("_total")
    )


def frame(header: dict[str, Any], body: dict[str, Any]) -> bytes:
    return bytes(libipld.encode_dag_cbor(header)) + bytes(libipld.encode_dag_cbor(body))


# --- a frame-level fault relay in front of the real firehose ---


@dataclass(frozen=True)
class Fault:
    kind: str  # close | stall | too_slow | future_cursor | garbage | text | oversized
    after: int  # frames forwarded on this connection before the fault


class FirehoseRelay:
    """A websocket server that relays the devnet firehose and plays the next fault on each connection."""

    def __init__(self, upstream: str, plan: list[Fault]) -> None:
        self.upstream = upstream
        self.plan = list(plan)
        self.cursors: list[str | None] = []
        self.played: list[str] = []
        self.handlers: set[asyncio.Task[Any]] = set()
        self.url = ""

    async def handler(self, ws: ServerConnection) -> None:
        task = asyncio.current_task()
        assert ws.request is not None and task is not None
        self.handlers.add(task)  # a handler idles on the upstream after the client left: cancelled at close
        cursor = parse_qs(urlsplit(ws.request.path).query).get("cursor", [None])[0]
        self.cursors.append(cursor)
        fault = self.plan.pop(0) if self.plan else None
        url = self.upstream if cursor is None else f"{self.upstream}?cursor={cursor}"
        async with websockets.connect(url, max_size=None) as up:
            sent = 0
            async for message in up:
                if fault is not None and sent >= fault.after:
                    self.played.append(fault.kind)
                    await self._play(ws, fault.kind)
                    return
                await ws.send(message)
                sent += 1

    @staticmethod
    async def _play(ws: ServerConnection, kind: str) -> None:
        if kind == "close":
            ws.transport.abort()  # no close frame: the TCP connection just goes
        elif kind == "stall":
            await ws.wait_closed()  # silent until the client gives up
        elif kind in ("too_slow", "future_cursor"):
            name = "ConsumerTooSlow" if kind == "too_slow" else "FutureCursor"
            await ws.send(frame({"op": -1}, {"error": name, "message": "injected"}))
            await ws.close()
        elif kind == "garbage":
            await ws.send(b"\xa2\x01garbage, not DAG-CBOR")
            await ws.wait_closed()
        elif kind == "text":
            await ws.send("a text frame")
            await ws.wait_closed()
        elif kind == "oversized":
            await ws.send(b"\x00" * (stream_mod.MAX_MESSAGE_BYTES + 1024))
            await ws.wait_closed()


@contextlib.asynccontextmanager
async def relay(devnet: Devnet, plan: list[Fault]) -> AsyncIterator[FirehoseRelay]:
    r = FirehoseRelay(devnet.firehose_url, plan)
    server = await serve(r.handler, "127.0.0.1", 0, max_size=None)
    port = next(iter(server.sockets)).getsockname()[1]
    r.url = f"ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos"
    try:
        yield r
    finally:
        server.close()
        for task in r.handlers:
            task.cancel()
        await server.wait_closed()


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    # the production backoffs (0.5 s doubling, 30 s XMTP retry) would only make the tests slow
    monkeypatch.setattr(stream_mod, "BACKOFF_START", 0.01)
    monkeypatch.setattr(verifier_mod, "RETRY_START", timedelta(seconds=0.5))


@pytest.fixture(scope="module")
def xmtp_node() -> AsyncIterator[XmtpNode]:
    with XmtpNode() as node:
        yield node


@pytest.fixture(scope="module")
async def small_backlog(devnet: Devnet) -> Backlog:
    return await write_backlog(devnet, accounts=4, rounds=12, seed=7)


# --- firehose faults ---


async def index_of(
    devnet: Devnet, backlog: Backlog, server_dsn: str, xmtp: XmtpNode, relay_url: str | None
) -> dict[str, Any]:
    settings = settings_for(devnet, xmtp.url, relay=relay_url or devnet.firehose_url, stall_timeout=1.0)
    # the cursor row is keyed by the upstream URL atmx subscribes to
    async with fresh_database(server_dsn, backlog.start_cursor, settings.firehose_url) as dsn:
        async with running(settings, dsn) as pool:
            await until("the backlog indexed", lambda: settled(pool, backlog))
            return await dump_index(pool, backlog.dids)


def firehose_fault_counters() -> dict[str, float]:
    return {
        "dropped": sample("atmx_firehose_reconnects_total", cause="dropped"),
        "stalled": sample("atmx_firehose_reconnects_total", cause="stalled"),
        "too_slow": sample("atmx_firehose_reconnects_total", cause="ConsumerTooSlow"),
        "too_slow_frames": sample("atmx_firehose_upstream_errors_total", name="ConsumerTooSlow"),
        "bad_frame": sample("atmx_firehose_reconnects_total", cause="bad_frame"),
        "text": sample("atmx_firehose_frame_errors_total", reason="text_frame"),
        "oversized": sample("atmx_firehose_frame_errors_total", reason="oversized"),
    }


async def test_firehose_faults_recover_without_loss(
    devnet: Devnet, small_backlog: Backlog, pg_server_dsn: str, xmtp_node: XmtpNode
) -> None:
    undisturbed = await index_of(devnet, small_backlog, pg_server_dsn, xmtp_node, None)
    assert undisturbed["bindings"], "the backlog produced no bindings"

    kinds = ["close", "stall", "too_slow", "garbage", "text", "oversized", "close", "too_slow"]
    # a few frames forwarded before each fault: every connection makes progress, and all the
    # faults play before the backlog runs out
    plan = [Fault(kind, after=3 + i % 3) for i, kind in enumerate(kinds)]
    before = firehose_fault_counters()
    async with relay(devnet, plan) as r:
        faulted = await index_of(devnet, small_backlog, pg_server_dsn, xmtp_node, r.url)
    assert r.played == kinds, f"faults played: {r.played}"
    after = firehose_fault_counters()
    moved = {k: after[k] - before[k] for k in before}
    # Once the backlog is indexed the last connection goes quiet, and with a 1 s stall
    # timeout atmx may legitimately reconnect again before `after` is sampled.
    assert moved.pop("stalled") >= 1, "the injected stall was not detected"
    assert moved == {
        "dropped": 2,
        "too_slow": 2,
        "too_slow_frames": 2,
        "bad_frame": 2,  # the garbage and the text frame
        "text": 1,
        "oversized": 1,
    }, moved
    # every reconnect resumed from where the last one left off: nothing was skipped
    assert all(c is not None for c in r.cursors), r.cursors
    assert faulted == undisturbed
    print(f"firehose faults injected: {len(kinds)} ({', '.join(kinds)}); index identical to the undisturbed run")


async def test_future_cursor_resets_to_live(
    devnet: Devnet, pds: PdsClient, db_dsn: str, xmtp_node: XmtpNode, small_backlog: Backlog
) -> None:
    """The real PDS answers FutureCursor to a cursor from the future: atmx drops it and follows live."""
    settings = settings_for(devnet, xmtp_node.url)
    pool = await create_pool(db_dsn, max_size=2)
    try:
        await pool.execute(
            "INSERT INTO cursors (upstream, seq) VALUES ($1, $2)", settings.firehose_url, small_backlog.end_seq + 10**6
        )
    finally:
        await pool.close()
    before = sample("atmx_firehose_upstream_errors_total", name="FutureCursor")
    async with running(settings, db_dsn) as pool:
        await until(
            "FutureCursor counted", lambda: _moved("atmx_firehose_upstream_errors_total", before, name="FutureCursor")
        )
        account = await pds.create_account("future-cursor.test")
        _, cid = await pds.put_record(account, XMTP, "self", inbox_record(random.Random(3)), validate=False)

        async def indexed() -> bool:
            return await pool.fetchval("SELECT cid FROM bindings WHERE did = $1", account.did) == cid

        await until("a live event indexed after the reset", indexed, 20)
        saved = await pool.fetchval("SELECT seq FROM cursors WHERE upstream = $1", settings.firehose_url)
        assert saved is not None and saved < small_backlog.end_seq + 10**6


async def _moved(metric: str, before: float, /, **labels: str) -> bool:
    return sample(metric, **labels) > before


# --- PLC and XMTP faults ---


async def test_plc_slow_down_and_garbage(devnet: Devnet, pds: PdsClient, db_dsn: str, xmtp_node: XmtpNode) -> None:
    """Slow: still indexed. Down or garbage: refused for now, queued, and indexed with proof once it is back."""
    plc = urlsplit(devnet.plc_url)
    assert plc.hostname is not None and plc.port is not None
    async with FaultProxy(plc.hostname, plc.port) as proxy:
        settings = settings_for(devnet, xmtp_node.url, plc_url=f"http://127.0.0.1:{proxy.port}")
        async with running(settings, db_dsn) as pool:

            async def write(name: str) -> tuple[str, str]:
                account = await pds.create_account(f"{name}-{int(time.time() * 1000) % 10**8}.test")
                _, cid = await pds.put_record(account, XMTP, "self", inbox_record(random.Random(name)))
                return account.did, cid

            async def binding_is(did: str, cid: str) -> bool:
                return await pool.fetchval("SELECT cid FROM bindings WHERE did = $1", did) == cid

            # slow: every PLC answer 0.3 s late; nothing is lost
            proxy.delay = 0.3
            did, cid = await write("slow")
            await until("the binding through a slow PLC", lambda: binding_is(did, cid), 20)
            proxy.delay = 0.0

            for fault in ("down", "garbage"):
                queued = sample("atmx_resync_queued_total", reason="identity_unavailable")
                repaired = sample("atmx_backfill_repos_total", job="repair", outcome="ok")
                if fault == "down":
                    proxy.refuse = True
                else:
                    proxy.reply = GARBAGE_JSON
                proxy.cut()  # kept-alive connections would still reach the real PLC
                did, cid = await write(fault)
                await until(
                    f"PLC {fault}: the commit refused and queued",
                    lambda q=queued: _moved("atmx_resync_queued_total", q, reason="identity_unavailable"),
                    30,
                )
                assert not await binding_is(did, cid)
                reason = await pool.fetchval("SELECT reason FROM rejections WHERE did = $1", did)
                assert reason == "identity_unavailable"
                proxy.refuse, proxy.reply = False, None
                # gap repair re-fetches the repo with proof once the PLC answers again
                await until(f"PLC {fault}: the binding repaired", lambda d=did, c=cid: binding_is(d, c), 30)
                assert sample("atmx_backfill_repos_total", job="repair", outcome="ok") > repaired
            assert proxy.stats.refused > 0 and proxy.stats.replied > 0
            assert sample("atmx_identity_resolutions_total", kind="did", outcome="unreachable") > 0


async def test_xmtp_node_unreachable_then_back(devnet: Devnet, pds: PdsClient, db_dsn: str) -> None:
    with XmtpNode() as node:
        settings = settings_for(devnet, node.url)
        node.stop()  # unreachable from the start
        errors = xmtp_api_errors()
        async with running(settings, db_dsn) as pool:
            account = await pds.create_account(f"xmtp-down-{int(time.time() * 1000) % 10**8}.test")
            _, cid = await pds.put_record(account, XMTP, "self", inbox_record(random.Random(11)))

            async def status() -> tuple[str, str | None] | None:
                row = await pool.fetchrow("SELECT cid, status, reason FROM bindings WHERE did = $1", account.did)
                return None if row is None or row["cid"] != cid else (row["status"], row["reason"])

            async def is_(expected: tuple[str, str | None]) -> bool:
                return await status() == expected

            await until("unverifiable while the node is down", lambda: is_(("unverifiable", "xmtp_unreachable")), 30)
            assert xmtp_api_errors() > errors
            unverifiable = {"outcome": "unverifiable", "reason": "xmtp_unreachable", "env": "production"}
            assert sample("atmx_xmtp_verifications_total", **unverifiable) > 0
            node.start()  # back on the same port: the retry checks it for real
            await until("checked once the node is back", lambda: is_(("invalid", "inbox_not_found")), 30)
