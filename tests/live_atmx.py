"""A running atmx as the end-to-end tests see it: its API's URL, an HTTP session, the database,
the indexer, and the time each answer took to appear."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg

from atmx.indexer.service import Indexer

# The end-to-end bar: after each step the API answers correctly within a second.
DEADLINE = 1.0


@dataclass
class Atmx:
    api: str
    http: aiohttp.ClientSession
    pool: asyncpg.Pool
    indexer: Indexer
    latencies: list[float]

    async def xrpc(self, nsid: str, **params: Any) -> tuple[int, dict[str, Any]]:
        async with self.http.get(f"{self.api}/xrpc/{nsid}", params=params) as resp:
            return resp.status, await resp.json()

    async def identity(self, actor: str) -> tuple[int, dict[str, Any]]:
        return await self.xrpc("directory.atmx.getIdentity", actor=actor)

    async def until(self, what: str, check: Callable[[], Awaitable[bool]]) -> None:
        """Poll the API until `check` holds; fail if that takes longer than DEADLINE."""
        start = time.monotonic()
        while True:
            if await check():
                self.latencies.append(time.monotonic() - start)
                return
            if time.monotonic() - start > DEADLINE:
                raise AssertionError(f"API did not show {what} within {DEADLINE}s")
            await asyncio.sleep(0.02)
