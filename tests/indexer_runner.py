"""The whole indexer in-process, as `atmx index` runs it (run_indexer), against the devnet:
its settings, a context manager that runs it, and a poll helper for "eventually"."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
from devnet_harness import Devnet

from atmx.indexer.config import Settings
from atmx.indexer.service import Indexer, run_indexer
from atmx.indexer.store.database import create_pool
from atmx.indexer.store.index_store import Store

SETTLE_TIMEOUT = 90.0


def settings_for(devnet: Devnet, xmtp_url: str, **over: Any) -> Settings:
    base: dict[str, Any] = {
        "relay": devnet.firehose_url,
        "plc_url": devnet.plc_url,
        "handle_resolver": devnet.pds_url,
        "allow_insecure_http": True,
        "stall_timeout": 3600.0,
        "xmtp_api": f"production={xmtp_url}",
    }
    return Settings(**{**base, **over})


@contextlib.asynccontextmanager
async def running(settings: Settings, dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(dsn)
    async with aiohttp.ClientSession() as session:
        indexer = Indexer(settings, Store(pool), session)
        await indexer.start()
        task = asyncio.create_task(run_indexer(settings, indexer, pool, session))
        try:
            yield pool
        finally:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise AssertionError("the indexer died") from task.exception()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await pool.close()


async def until(what: str, check: Callable[[], Awaitable[bool]], within: float = SETTLE_TIMEOUT) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not within {within}s"
        await asyncio.sleep(0.1)
