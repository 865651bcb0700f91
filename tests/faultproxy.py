"""A loopback TCP proxy that misbehaves on demand, for fault tests (asyncio).

It sits between atmx and an upstream (the PDS firehose, the PLC directory, an XMTP node)
and can:

- `cut()`: abort every live connection at once (the upstream vanished mid-stream);
- `stalled = True`: keep connections open but forward nothing (a silent stall);
- `delay = s`: hold every chunk `s` seconds before forwarding it (a slow upstream);
- `refuse = True`: accept and close new connections at once (the upstream is down);
- `reply = b"..."`: answer new connections with these bytes and close (the upstream answers garbage);
- `inject(data)`: write bytes to every client as if the upstream sent them.

    async with FaultProxy("127.0.0.1", 2583) as proxy:
        url = f"http://127.0.0.1:{proxy.port}"
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from types import TracebackType
from typing import Self

CHUNK = 64 * 1024


@dataclass
class ProxyStats:
    connections: int = 0
    refused: int = 0
    replied: int = 0
    cut: int = 0
    bytes_up: int = 0  # client -> upstream
    bytes_down: int = 0  # upstream -> client


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = port
        self.delay = 0.0
        self.refuse = False
        self.reply: bytes | None = None
        self.stats = ProxyStats()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- fault knobs ---

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    @stalled.setter
    def stalled(self, value: bool) -> None:
        if value:
            self._flowing.clear()
        else:
            self._flowing.set()

    def cut(self) -> int:
        """Abort every live connection (no close handshake); returns how many were cut."""
        links = list(self._links)
        for client, upstream in links:
            for writer in (client, upstream):
                writer.transport.abort()
        self._links.clear()
        self.stats.cut += len(links)
        return len(links)

    def inject(self, data: bytes) -> int:
        """Send `data` to every connected client; returns how many received it."""
        for client, _ in self._links:
            client.write(data)
        return len(self._links)

    @property
    def live(self) -> int:
        return len(self._links)

    # --- lifecycle ---

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- forwarding ---

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            self.stats.refused += 1
            writer.transport.abort()
            return
        if self.reply is not None:
            self.stats.replied += 1
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(reader.read(CHUNK), 5)  # let the request arrive first
                writer.write(self.reply)
                await writer.drain()
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.stats.connections += 1
        link = (writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(self._pump(reader, up_writer, "up"), self._pump(up_reader, writer, "down"))
        finally:
            self._links.discard(link)
            for w in link:
                w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                await self._flowing.wait()
                if self.delay > 0:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
                if direction == "up":
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
        except (ConnectionError, OSError):
            pass
        finally:
            # a half-close ends the whole link: both sides see the connection go
            writer.transport.abort()
