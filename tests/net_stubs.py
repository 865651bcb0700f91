"""Network stand-ins that lie on purpose: a listener that proves nothing connected, a DNS that
answers what the test says. Shared by the SSRF tests of several tiers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver


class Listener:
    """Counts TCP connections on one port of 127.0.0.1 and ::1: proof that nothing connected."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self.servers: list[asyncio.Server] = []

    async def _accept(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def start(self) -> None:
        v4 = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = v4.sockets[0].getsockname()[1]
        self.servers = [v4, await asyncio.start_server(self._accept, "::1", self.port)]

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
            await server.wait_closed()


class LyingResolver(AbstractResolver):
    """A stand-in DNS that answers what the test says (a hostile name's records), on a given port."""

    def __init__(self, answers: dict[str, list[str]], port: int | None = None) -> None:
        self.answers = answers
        self.port = port
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        self.asked.append(host)
        if host not in self.answers:
            raise OSError(f"{host}: no such name (lying resolver)")
        out = []
        for address in self.answers[host]:
            fam = socket.AF_INET6 if ":" in address else socket.AF_INET
            out.append(
                {"hostname": host, "host": address, "port": self.port or port, "family": fam, "proto": 0, "flags": 0}
            )
        return out

    async def close(self) -> None:
        pass


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    server = Listener()
    await server.start()
    yield server
    await server.stop()
