"""The fault proxy itself, against a loopback echo server: each knob does what it says."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from faultproxy import FaultProxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with FaultProxy("127.0.0.1", port) as p:
        yield p
    server.close()


async def _connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def test_forwards_both_ways(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    writer.write(b"hello")
    assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
    assert proxy.stats.connections == 1 and proxy.stats.bytes_up == 5 and proxy.stats.bytes_down == 5
    writer.close()


async def test_delay_holds_each_chunk(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    proxy.delay = 0.2
    t0 = time.monotonic()
    writer.write(b"x")
    assert await asyncio.wait_for(reader.readexactly(1), 5) == b"x"
    assert time.monotonic() - t0 >= 0.4  # once up, once down
    writer.close()


async def test_stall_keeps_the_connection_silent_until_resumed(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    proxy.stalled = True
    writer.write(b"ping")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(4), 0.3)
    assert proxy.live == 1  # still connected: a silent stall, not a close
    proxy.stalled = False
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
    writer.close()


async def test_cut_aborts_live_connections(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    writer.write(b"a")
    await asyncio.wait_for(reader.readexactly(1), 5)
    assert proxy.cut() == 1
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), 5)
    assert proxy.stats.cut == 1 and proxy.live == 0


async def test_refuse_and_reply(proxy: FaultProxy) -> None:
    proxy.refuse = True
    reader, writer = await _connect(proxy)
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), 5)
    assert proxy.stats.refused == 1 and proxy.stats.connections == 0
    proxy.refuse = False
    proxy.reply = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n{{{"
    reader, writer = await _connect(proxy)
    writer.write(b"GET / HTTP/1.1\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), 5) == proxy.reply
    assert proxy.stats.replied == 1


async def test_inject_reaches_clients(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    writer.write(b"a")
    await asyncio.wait_for(reader.readexactly(1), 5)
    assert proxy.inject(b"\xff\x00junk") == 1
    assert await asyncio.wait_for(reader.readexactly(6), 5) == b"\xff\x00junk"
    writer.close()
