"""api/subscription.py: subscribeBindings over a real websocket, against a real PostgreSQL.

Changes are written through the store (store/apply.py), exactly as the indexer writes them;
consumers read both framings and every cursor edge: live, replay then live, from the start,
outdated, in the future, too slow.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import libipld
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from atmx.api import subscription
from atmx.api.app import create_app
from atmx.indexer.index.writes import BindingRow, IdentityUpdate, RecordDelete, StatusUpdate, WriteSet
from atmx.indexer.store.changes import prune_changes
from atmx.indexer.store.index_store import Store

NSID = "directory.atmx.subscribeBindings"


def did(i: int) -> str:
    return "did:plc:" + f"{i:024d}".translate(str.maketrans("0123456789", "abcdefghij"))


def row(i: int, rev: str, *, protocol: str = "didcomm", cid: str | None = None) -> BindingRow:
    collection = {"didcomm": "at.didcomm.keyPackage", "xmtp": "org.xmtp.inbox"}[protocol]
    record = {"did": "did:peer:2.x", "mediators": ["did:web:m.example"], "createdAt": "2026-01-01T00:00:00Z"}
    return BindingRow(did(i), collection, "self", protocol, cid or f"bafy{rev}", rev, record, "valid", None, None, None)


class Server:
    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self.pool = pool
        self.store = Store(pool)
        self.url = url
        self.revs = iter(f"3k{n:011d}".translate(str.maketrans("0123456789", "abcdefghij")) for n in range(1, 10**6))

    def rev(self) -> str:
        return next(self.revs)

    async def bind(self, i: int, **kw: Any) -> None:
        await self.store.apply([WriteSet(did=did(i), create_account=True, upserts=[row(i, self.rev(), **kw)])], None)

    async def head(self) -> int:
        return int(await self.pool.fetchval("SELECT coalesce(max(seq), 0) FROM changes"))


@pytest.fixture
async def server(db_pool: asyncpg.Pool) -> AsyncIterator[Server]:
    app = create_app(pool_provider=lambda: db_pool, version="test")
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    srv = Server(db_pool, f"ws://{host}:{port}/xrpc/{NSID}")
    await asyncio.wait_for(app[subscription.HUB].ready.wait(), 5)
    yield srv
    await runner.cleanup()


class Consumer:
    """A consumer that decodes either framing into (kind, body) pairs."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def next(self, wait: float = 5.0) -> tuple[str, dict[str, Any]]:
        msg = await self.ws.receive(timeout=wait)
        if msg.type == aiohttp.WSMsgType.BINARY:
            header, body = libipld.decode_dag_cbor_multi(msg.data)
            kind = header["t"][1:] if header["op"] == 1 else "error"
            return kind, body
        if msg.type == aiohttp.WSMsgType.TEXT:
            data = json.loads(msg.data)
            if data["$type"] == "error":
                return "error", data
            payload = data["payload"]
            return payload.pop("$type").rsplit("#", 1)[1], payload
        raise AssertionError(f"unexpected websocket message {msg.type}")

    async def take(self, n: int) -> list[tuple[str, dict[str, Any]]]:
        return [await self.next() for _ in range(n)]


async def connect(
    session: aiohttp.ClientSession, server: Server, *, json_framing: bool = False, **params: Any
) -> Consumer:
    protocols = ("xrpc.v1.json",) if json_framing else ()
    ws = await session.ws_connect(server.url, params=params, protocols=protocols)
    if json_framing:
        assert ws.protocol == "xrpc.v1.json"
    await asyncio.sleep(0.1)  # the server joins the hub before changes are written
    return Consumer(ws)


@pytest.mark.parametrize("json_framing", [False, True])
async def test_a_live_consumer_sees_every_change_in_order(server: Server, json_framing: bool) -> None:
    async with aiohttp.ClientSession() as session:
        consumer = await connect(session, server, json_framing=json_framing)
        await server.bind(1)
        await server.store.apply([WriteSet(did=did(1), status=StatusUpdate(False, "takendown"))], None)
        await server.store.apply([WriteSet(did=did(1), status=StatusUpdate(True, None))], None)
        await server.store.apply([WriteSet(did=did(1), identity=IdentityUpdate("one.test", True, None))], None)
        await server.store.apply([WriteSet(did=did(1), upserts=[row(1, server.rev(), cid="bafytwo")])], None)
        await server.store.apply(
            [WriteSet(did=did(1), deletes=[RecordDelete("at.didcomm.keyPackage", "self", server.rev())])], None
        )
        got = await consumer.take(6)
    kinds = [(k, b.get("action"), b.get("accountStatus")) for k, b in got]
    assert kinds == [
        ("binding", "create", None),
        ("account", None, "takendown"),
        ("account", None, "active"),
        ("handle", None, None),
        ("binding", "update", None),
        ("binding", "delete", None),
    ]
    seqs = [b["seq"] for _, b in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == 6
    create = got[0][1]
    assert create["did"] == did(1) and create["protocol"] == "didcomm" and create["status"] == "valid"
    assert create["binding"]["mediators"] == ["did:web:m.example"]  # the projection getIdentity serves
    assert got[3][1]["handle"] == "one.test" and got[4][1]["handle"] == "one.test"
    assert datetime.fromisoformat(create["time"].replace("Z", "+00:00")) <= datetime.now(UTC)


async def test_a_cursor_replays_then_goes_live_with_no_gap_and_no_duplicate(server: Server) -> None:
    for i in range(1, 6):
        await server.bind(i)
    head = await server.head()
    async with aiohttp.ClientSession() as session:
        consumer = await connect(session, server, cursor=str(head - 3))
        replayed = await consumer.take(3)
        await server.bind(6)
        await server.bind(7)
        live = await consumer.take(2)
        with pytest.raises(TimeoutError):
            await consumer.next(wait=0.3)  # nothing more: no duplicate
    assert [b["seq"] for _, b in replayed + live] == list(range(head - 2, head + 3))


async def test_a_replay_longer_than_a_page_joins_the_live_stream_exactly(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscription, "PAGE", 7)  # many pages, and the hub reads in pages too
    for i in range(1, 31):
        await server.bind(i)
    async with aiohttp.ClientSession() as session:
        consumer = await connect(session, server, cursor="0")

        async def write() -> None:
            for i in range(10):
                await server.bind(100 + i)

        writer = asyncio.create_task(write())
        got = await consumer.take(40)
        await writer
    assert [b["seq"] for _, b in got] == list(range(1, 41))


async def test_a_consumer_arriving_before_the_hub_has_read_the_log_misses_nothing(
    db_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`atmx run` opens the API while the hub may still be retrying its first read of the log (no
    pool yet): a consumer that comes in then, with a cursor, must still get every change once."""
    gate = asyncio.Event()
    real_bounds = subscription.log_bounds
    calls = 0

    async def hub_waits_first(pool: asyncpg.Pool) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:  # the hub's first read, at start
            await gate.wait()
        return await real_bounds(pool)

    monkeypatch.setattr(subscription, "log_bounds", hub_waits_first)
    app = create_app(pool_provider=lambda: db_pool, version="test")
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    server = Server(db_pool, f"ws://{host}:{port}/xrpc/{NSID}")
    try:
        for i in range(1, 4):
            await server.bind(i)
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(server.url, params={"cursor": "0"})
            consumer = Consumer(ws)
            await asyncio.sleep(0.2)  # the consumer is in before the hub has its position
            for i in range(4, 6):
                await server.bind(i)
            gate.set()
            await asyncio.sleep(0.2)
            await server.bind(6)
            got = await consumer.take(6)
            with pytest.raises(TimeoutError):
                await consumer.next(wait=0.3)
        assert [b["did"] for _, b in got] == [did(i) for i in range(1, 7)]
    finally:
        gate.set()
        await runner.cleanup()


async def test_a_consumer_that_closes_while_waiting_leaves_the_hub(server: Server) -> None:
    consumers = "atmx_stream_consumers"
    async with aiohttp.ClientSession() as session:
        consumer = await connect(session, server)
        assert REGISTRY.get_sample_value(consumers) == 1  # waiting for a change
        await consumer.ws.close()
        for _ in range(100):  # no change comes: the close alone must end the session
            if REGISTRY.get_sample_value(consumers) == 0:
                break
            await asyncio.sleep(0.02)
        assert REGISTRY.get_sample_value(consumers) == 0


async def test_frames_are_not_compressed_per_consumer_even_when_offered(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(server.url, compress=15)  # offers permessage-deflate
        try:
            assert ws.compress == 0  # declined: a frame is built once, not deflated per consumer
        finally:
            await ws.close()


async def test_filters_by_did_and_protocol(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        consumer = await connect(session, server, dids=[did(2)], protocols=["xmtp"])
        await server.bind(1, protocol="xmtp")
        await server.bind(2, protocol="didcomm")
        await server.bind(2, protocol="xmtp")
        await server.store.apply([WriteSet(did=did(2), status=StatusUpdate(False, "deactivated"))], None)
        got = await consumer.take(2)
    assert [(k, b["did"], b.get("protocol")) for k, b in got] == [
        ("binding", did(2), "xmtp"),
        ("account", did(2), None),  # account changes concern every protocol of the account
    ]


@pytest.mark.parametrize("json_framing", [False, True])
async def test_a_cursor_beyond_the_head_is_a_future_cursor_error(server: Server, json_framing: bool) -> None:
    await server.bind(1)
    async with aiohttp.ClientSession() as session:
        consumer = await connect(session, server, json_framing=json_framing, cursor=str(await server.head() + 5))
        kind, body = await consumer.next()
        assert kind == "error" and body["error"] == "FutureCursor"
        closed = await consumer.ws.receive(timeout=5)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


async def test_an_outdated_cursor_is_told_and_starts_at_the_oldest_retained(server: Server) -> None:
    for i in range(1, 5):
        await server.bind(i)
    await server.pool.execute("UPDATE changes SET time = now() - interval '8 days' WHERE seq <= 2")
    assert await prune_changes(server.pool, datetime.now(UTC) - timedelta(days=7)) == 2
    async with aiohttp.ClientSession() as session:
        consumer = await connect(session, server, cursor="1")
        kind, body = await consumer.next()
        assert (kind, body["name"]) == ("info", "OutdatedCursor")
        assert [b["seq"] for _, b in await consumer.take(2)] == [3, 4]
        from_start = await connect(session, server, cursor="0")  # from the start of retention: no notice
        assert [(k, b["seq"]) for k, b in await from_start.take(2)] == [("binding", 3), ("binding", 4)]


async def test_malformed_parameters_are_refused_before_the_upgrade(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        for params in ({"cursor": "-1"}, {"cursor": "x"}, {"protocols": "smtp"}, {"dids": "notadid"}):
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await session.ws_connect(server.url, params=params)
            assert err.value.status == 400


async def test_a_consumer_too_slow_is_told_and_closed(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub hands a page of changes to every consumer at once: a backlog past the bound is a
    consumer that cannot keep up. It is told, closed, and nothing it missed is held for it."""
    monkeypatch.setattr(subscription, "MAX_BACKLOG", 5)
    dropped = REGISTRY.get_sample_value("atmx_stream_consumers_dropped_total", {"reason": "too_slow"}) or 0.0
    async with aiohttp.ClientSession() as session:
        consumer = await connect(session, server)
        batch = [WriteSet(did=did(i), create_account=True, upserts=[row(i, server.rev())]) for i in range(50)]
        await server.store.apply(batch, None)  # one transaction: the hub reads the 50 changes at once
        kinds = []
        while True:
            msg = await consumer.ws.receive(timeout=5)
            if msg.type != aiohttp.WSMsgType.BINARY:
                break
            header, body = libipld.decode_dag_cbor_multi(msg.data)
            kinds.append(body.get("error", header.get("t")))
    assert kinds[-1] == "ConsumerTooSlow" and len(kinds) < 50
    assert REGISTRY.get_sample_value("atmx_stream_consumers_dropped_total", {"reason": "too_slow"}) == dropped + 1
