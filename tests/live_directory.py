"""A live atmx (the real indexer and API) against the reference PDS on loopback, for the end-to-end
tiers: the `directory` fixture and its helpers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest
from devnet_harness import Devnet

from atmx.api.app import create_app, run_api
from atmx.indexer.config import Settings
from atmx.indexer.service import Indexer
from atmx.indexer.store.index_store import Store
from atmx.indexer.version import __version__

NS = "directory.atmx"


@dataclass
class Directory:
    api: str
    http: aiohttp.ClientSession
    pool: asyncpg.Pool

    async def get(self, method: str, **params: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
        async with self.http.get(f"{self.api}/xrpc/{NS}.{method}", params=params) as resp:
            body = await (resp.read() if resp.content_type == "application/vnd.ipld.car" else resp.json())
            return resp.status, body, resp

    async def until(self, what: str, check: Callable[[], Awaitable[bool]], deadline: float = 10.0) -> None:
        start = time.monotonic()
        while not await check():
            if time.monotonic() - start > deadline:
                raise AssertionError(f"not within {deadline}s: {what}")
            await asyncio.sleep(0.05)

    async def shows(self, did: str, protocol: str, cid: str | None) -> bool:
        status, body, _ = await self.get("getIdentity", actor=did)
        got = body.get(protocol, {}).get("cid") if status == 200 else None
        return got == cid


def settings_for(devnet: Devnet) -> Settings:
    return Settings(
        relay=devnet.firehose_url,
        plc_url=devnet.plc_url,
        handle_resolver=devnet.pds_url,
        allow_insecure_http=True,
        stall_timeout=3600,
    )


@pytest.fixture
async def directory(devnet: Devnet, db_pool: asyncpg.Pool) -> AsyncIterator[Directory]:
    settings = settings_for(devnet)
    async with aiohttp.ClientSession() as session:
        indexer = Indexer(settings, Store(db_pool), session)
        await indexer.start()
        task = asyncio.create_task(indexer.run())
        app = create_app(pool_provider=lambda: db_pool, version=__version__)
        runner = await run_api(app, "127.0.0.1", 0)
        host, port = runner.addresses[0][:2]
        try:
            await asyncio.wait_for(indexer.stream.connected.wait(), 10)
            yield Directory(f"http://{host}:{port}", session, db_pool)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await runner.cleanup()
