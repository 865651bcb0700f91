"""identity/handle_check.py: a handle that changed hands silently stops being served for its old owner."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from forge import SigningKey
from pipeline_harness import Plc

from atmx.indexer.identity.handle_check import HandleChecker
from atmx.indexer.identity.resolver import IdentityResolver
from atmx.indexer.index.writes import IdentityUpdate, WriteSet
from atmx.indexer.store.index_store import Store

ALICE = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"
BOB = "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb"


@pytest.fixture
async def world(db_pool: asyncpg.Pool) -> AsyncIterator[tuple[Plc, dict[str, str], HandleChecker]]:
    plc = Plc()
    handles: dict[str, str] = {}

    async def resolve_handle(request: web.Request) -> web.Response:
        did = handles.get(request.query.get("handle", ""))
        if did is None:
            return web.json_response({"error": "HandleNotFound", "message": "no"}, status=400)
        return web.json_response({"did": did})

    app = web.Application()
    app.router.add_get("/xrpc/com.atproto.identity.resolveHandle", resolve_handle)
    app.router.add_get("/{did}", plc.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    plc.url = f"http://{host}:{port}"
    async with aiohttp.ClientSession() as session:
        resolver = IdentityResolver(
            plc.url, handle_resolver=plc.url, session=session, allow_insecure_http=True, refresh_min_interval=0
        )
        yield plc, handles, HandleChecker(Store(db_pool), resolver, interval=3600)
    await runner.cleanup()


async def test_a_handle_that_changed_hands_is_cleared_at_the_next_check(
    world: tuple[Plc, dict[str, str], HandleChecker], db_pool: asyncpg.Pool
) -> None:
    plc, handles, checker = world
    store = checker.store
    plc.register(ALICE, SigningKey.generate(), handle="shared.test")
    handles["shared.test"] = ALICE
    await store.apply(
        [WriteSet(did=ALICE, create_account=True, identity=IdentityUpdate("shared.test", True, None))], None
    )
    assert await checker.run_once() == 0  # checked just now: nothing due

    # the domain moves to Bob, who never appears on the firehose; Alice's document still claims it
    handles["shared.test"] = BOB
    await db_pool.execute("UPDATE accounts SET handle_checked_at = now() - interval '2 hours'")
    assert await checker.run_once() == 1
    account = await store.account(ALICE)
    assert account is not None and (account.handle, account.handle_verified) == ("shared.test", False)
    body = await db_pool.fetchval("SELECT body FROM changes WHERE kind = 'handle' ORDER BY seq DESC LIMIT 1")
    assert body == {"did": ALICE, "handle": "handle.invalid"}

    # and when it comes back, the next check shows it again
    handles["shared.test"] = ALICE
    await db_pool.execute("UPDATE accounts SET handle_checked_at = now() - interval '2 hours'")
    await checker.run_once()
    account = await store.account(ALICE)
    assert account is not None and account.handle_verified


async def test_an_unresolvable_identity_keeps_its_handle_and_is_checked_again_later(
    world: tuple[Plc, dict[str, str], HandleChecker], db_pool: asyncpg.Pool
) -> None:
    plc, _, checker = world
    await checker.store.apply(
        [WriteSet(did=ALICE, create_account=True, identity=IdentityUpdate("a.test", True, "https://pds"))], None
    )
    await db_pool.execute("UPDATE accounts SET handle_checked_at = now() - interval '2 hours'")
    plc.down = True
    assert await checker.run_once() == 1
    row = await db_pool.fetchrow(
        "SELECT handle_verified, pds, handle_checked_at > now() - interval '1 minute' AS re FROM accounts"
    )
    assert tuple(row) == (True, "https://pds", True)
