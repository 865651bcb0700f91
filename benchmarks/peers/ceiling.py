"""The transport ceiling: receive every frame from the replay server and discard it.

    python -m benchmarks.peers.ceiling ws://127.0.0.1:PORT LAST_SEQ

Prints `{"end": <wall time>, "frames": n}` after `LAST_SEQ` messages, then waits to be stopped
(so the harness can read its CPU time). It reads the socket exactly as atmx's stream loop does
(an asyncio Protocol, the websockets handshake, atmx's frame reader: indexer/websocket.py),
and does nothing with the messages: what any consumer built that way cannot beat.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from atmx.indexer.firehose.websocket import Handshake, MessageReader


class Discard(asyncio.Protocol):
    def __init__(self, url: str, count: int, done: asyncio.Future[float]) -> None:
        self.handshake: Handshake | None = Handshake(url)
        self.reader = MessageReader(1 << 30)
        self.count = count
        self.frames = 0
        self.done = done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport) and self.handshake is not None
        transport.write(self.handshake.request)

    def data_received(self, data: bytes) -> None:
        if self.handshake is not None:
            rest = self.handshake.receive(data)
            if rest is None:
                return
            self.handshake, data = None, rest
        self.frames += len(self.reader.feed(data))
        if self.frames >= self.count and not self.done.done():
            self.done.set_result(time.time())


async def consume(url: str, count: int) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[float] = loop.create_future()
    protocol = Discard(url + "/xrpc/com.atproto.sync.subscribeRepos", count, done)
    host, port = url.removeprefix("ws://").rsplit(":", 1)
    await loop.create_connection(lambda: protocol, host, int(port))
    end = await done
    print(json.dumps({"end": end, "frames": protocol.frames}), flush=True)
    await asyncio.Event().wait()  # until the harness stops us


if __name__ == "__main__":
    asyncio.run(consume(sys.argv[1], int(sys.argv[2])))
