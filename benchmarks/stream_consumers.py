"""Many subscribeBindings consumers in one process, for the stream benchmarks.

    python -m benchmarks.stream_consumers ws://127.0.0.1:2584 1000 [--cursor N] [--until SEQ] [--seconds S] [--json]

Every consumer reads its stream and notes when each change arrived (seq, time); the first one also
decodes each change's did, uri and action, so the harness can tell which firehose event caused it.
The consumers share a machine with the server, so they are kept light: the CBOR framing is read
with atmx's own sans-I/O frame reader on an asyncio Protocol (as benchmarks/peers/ceiling.py reads
the firehose) and decoded with libipld; the JSON framing goes through aiohttp. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import aiohttp
import libipld

from atmx.indexer.firehose.websocket import CloseMessage, Handshake, MessageReader, PingMessage, pong_frame

PATH = "/xrpc/directory.atmx.subscribeBindings"


def _record(out: dict[str, Any], kind: str, body: dict[str, Any], now: float, recorder: bool) -> int:
    """Note one message; returns its seq (0 for messages without one)."""
    seq: int = body.get("seq", 0)
    if kind == "#binding":
        out["arrivals"].append((seq, now))
        if recorder:
            out["changes"].append((seq, body["did"], body["uri"], body["action"], body["time"]))
    out["received"] += 1
    return seq


def _connected(out: dict[str, Any]) -> None:
    out["connected"] += 1
    if out["connected"] == out["count"]:
        out["ready_at"] = time.time()  # every consumer is connected from here on


class _CborFollower(asyncio.Protocol):
    """One consumer of the CBOR framing, on atmx's frame reader; `done` resolves when it stops."""

    def __init__(self, url: str, out: dict[str, Any], *, recorder: bool, until: int | None) -> None:
        self.handshake: Handshake | None = Handshake(url)
        self.reader = MessageReader(1 << 24)
        self.out, self.recorder, self.until = out, recorder, until
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.opened = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport) and self.handshake is not None
        self.transport = transport
        transport.write(self.handshake.request)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.handshake is not None:
            rest = self.handshake.receive(data)
            if rest is None:
                return
            self.handshake, data, self.opened = None, rest, True
            _connected(self.out)
        now = time.time()
        for message in self.reader.feed(data):
            if isinstance(message, bytes):
                header, body = libipld.decode_dag_cbor_multi(message)
                if header.get("op") != 1:
                    self.out["errors"].append(body.get("error"))
                    self.transport.close()
                    return
                seq = _record(self.out, header["t"], body, now, self.recorder)
                if self.until is not None and seq >= self.until:
                    self.transport.close()
                    return
            elif isinstance(message, PingMessage):
                self.transport.write(pong_frame(message.payload))
            elif isinstance(message, CloseMessage):
                self.out["closed_early"] += 1
                self.transport.close()
                return
        if self.reader.error is not None:
            self.out["errors"].append(f"protocol error: {self.reader.error.reason}")
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def consume_cbor(url: str, out: dict[str, Any], *, recorder: bool, until: int | None, deadline: float) -> None:
    host, _, port = url.removeprefix("ws://").partition("/")[0].rpartition(":")
    loop = asyncio.get_running_loop()
    follower = _CborFollower(url, out, recorder=recorder, until=until)
    await loop.create_connection(lambda: follower, host, int(port))
    try:
        await asyncio.wait_for(asyncio.shield(follower.done), max(0.1, deadline - time.time()))
    except TimeoutError:
        pass
    finally:
        if follower.transport is not None:
            follower.transport.close()


async def consume(
    session: aiohttp.ClientSession,
    url: str,
    *,
    recorder: bool,
    json_framing: bool,
    until: int | None,
    deadline: float,
    out: dict[str, Any],
) -> None:
    protocols = ("xrpc.v1.json",) if json_framing else ()
    async with session.ws_connect(url, protocols=protocols, max_msg_size=0, heartbeat=None) as ws:
        _connected(out)
        last = 0
        while time.time() < deadline:
            try:
                msg = await ws.receive(timeout=max(0.1, deadline - time.time()))
            except TimeoutError:
                break
            now = time.time()
            if msg.type == aiohttp.WSMsgType.BINARY:
                header, body = libipld.decode_dag_cbor_multi(msg.data)
                if header.get("op") != 1:
                    out["errors"].append(body.get("error"))
                    break
                kind = header["t"]
            elif msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                if data.get("$type") == "error":
                    out["errors"].append(data.get("error"))
                    break
                body = data["payload"]
                kind = "#" + body["$type"].rsplit("#", 1)[1]
            else:
                out["closed_early"] += 1
                return
            last = _record(out, kind, body, now, recorder) or last
            if until is not None and last >= until:
                break


async def main_async(
    base: str, count: int, cursor: int | None, until: int | None, seconds: float, json_framing: bool
) -> None:
    url = base + PATH + (f"?cursor={cursor}" if cursor is not None else "")
    out: dict[str, Any] = {
        "connected": 0,
        "closed_early": 0,
        "count": count,
        "ready_at": None,
        "received": 0,
        "errors": [],
        "arrivals": [],
        "changes": [],
    }
    deadline = time.time() + (seconds or 3600)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.perf_counter()
        tasks = [
            asyncio.create_task(
                consume(session, url, recorder=i == 0, json_framing=True, until=until, deadline=deadline, out=out)
                if json_framing
                else consume_cbor(url, out, recorder=i == 0, until=until, deadline=deadline)
            )
            for i in range(count)
        ]
        await asyncio.gather(*tasks, return_exceptions=True)
        out["seconds"] = time.perf_counter() - t0
    if until is not None:  # a replay: the arrival list is only needed for the live fan-out
        out["arrivals"] = []
        out["changes"] = []
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stream_consumers")
    p.add_argument("base")
    p.add_argument("count", type=int)
    p.add_argument("--cursor", type=int)
    p.add_argument("--until", type=int)
    p.add_argument("--seconds", type=float, default=0.0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    asyncio.run(main_async(a.base, a.count, a.cursor, a.until, a.seconds, a.json))


if __name__ == "__main__":
    main()
