"""Backfill and gap repair: discovery against loopback stubs, proof fetching against the reference PDS.

The devnet tests write records through the real PDS *before* atmx looks, then run
`atmx backfill` (a real subprocess, so it can be killed with SIGKILL) against real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from devnet_harness import Account, Devnet, PdsClient, xmtp_inbox_record
from sample_records import keypackage_record as key_package_record  # a real did:peer:2, so valid
from websockets.asyncio.server import ServerConnection, serve

from atmx.indexer.backfill.job import (
    Backfiller,
    FetchError,
    Options,
    SyncClient,
    WholeNetworkRefused,
    backfiller,
    default_sources,
    http_base,
    pds_sources,
    read_dids_file,
)
from atmx.indexer.backfill.repair import GapRepair
from atmx.indexer.config import Settings
from atmx.indexer.firehose.stream import FirehoseStream
from atmx.indexer.records.registry import FAMILIES
from atmx.indexer.service import Indexer, run_indexer
from atmx.indexer.store.backfill_store import BackfillStore
from atmx.indexer.store.index_store import Store

FRAMES = Path(__file__).parent / "fixtures" / "devnet-frames"


def fake_did(i: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    tail = "".join(alphabet[(i >> (5 * k)) % 32] for k in range(24))
    return f"did:plc:{tail}"


# --- loopback stubs ---------------------------------------------------------------------


class Stub:
    """An aiohttp app on loopback; `hits` records (path, query) of every request."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.hits: list[tuple[str, dict[str, str]]] = []
        self.times: list[float] = []
        self.runner: web.AppRunner | None = None
        self.base = ""

    def route(self, nsid: str, handler: Callable[[web.Request], Any]) -> None:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            self.hits.append((nsid, dict(request.query)))
            self.times.append(time.monotonic())
            resp: web.StreamResponse = await handler(request)
            return resp

        self.app.router.add_get(f"/xrpc/{nsid}", wrapped)

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.base = f"http://127.0.0.1:{port}"


@pytest.fixture
async def stubs() -> AsyncIterator[Callable[[], Stub]]:
    made: list[Stub] = []

    def make() -> Stub:
        s = Stub()
        made.append(s)
        return s

    yield make
    for s in made:
        if s.runner is not None:
            await s.runner.cleanup()


def paged(dids: list[str], page: int, key: str = "cursor") -> Callable[[web.Request], Any]:
    """A listRepos-style handler that pages `dids` by an opaque cursor."""

    async def handler(request: web.Request) -> web.Response:
        start = int(request.query.get(key, "0").removeprefix("c"))
        chunk = dids[start : start + page]
        body: dict[str, Any] = {"repos": [{"did": d} for d in chunk]}
        if start + page < len(dids):
            body["cursor"] = f"c{start + page}"
        return web.json_response(body)

    return handler


OPTS = Options(workers=4, host_rate=1000.0, host_burst=100, attempts=2, allow_insecure_http=True)


async def make_backfiller(pool: asyncpg.Pool, session: aiohttp.ClientSession, opts: Options = OPTS) -> Backfiller:
    from atmx.indexer.identity.resolver import IdentityResolver

    return Backfiller(pool, IdentityResolver(session=session), session, opts)


# --- pure helpers ---------------------------------------------------------------------


def test_http_base_and_sources() -> None:
    assert http_base("wss://bsky.network") == "https://bsky.network"
    assert http_base("ws://127.0.0.1:2583/xrpc/com.atproto.sync.subscribeRepos") == "http://127.0.0.1:2583"
    assert http_base("relay1.us-east.bsky.network") == "https://relay1.us-east.bsky.network"
    assert [s.key for s in default_sources("wss://bsky.network")] == [
        "collection:https://bsky.network:org.xmtp.inbox",
        "collection:https://bsky.network:at.didcomm.keyPackage",
        "collection:https://bsky.network:com.germnetwork.declaration",
        "collection:https://bsky.network:blue.catbird.chat.declaration",
        "collection:https://bsky.network:blue.catbird.chat.device",
        "collection:https://bsky.network:blue.catbird.mlsChat.device",
    ]
    assert pds_sources(["https://pds.example/"])[0].key == "repos:https://pds.example"
    assert read_dids_file("did:plc:a # x\n\n# c\n did:web:b \n") == ["did:plc:a", "did:web:b"]


# --- discovery -------------------------------------------------------------------------


async def test_list_repos_by_collection_pages_resumes_and_dedupes(
    stubs: Callable[[], Stub], db_pool: asyncpg.Pool
) -> None:
    relay = stubs()
    xmtp = [fake_did(i) for i in range(25)]
    didcomm = [fake_did(i) for i in range(20, 32)]  # 5 DIDs publish both
    fail_once = {"c20": True}

    async def by_collection(request: web.Request) -> web.Response:
        if request.query.get("cursor") in fail_once and fail_once.pop(request.query["cursor"]):
            return web.json_response({"error": "InternalServerError"}, status=500)
        dids = xmtp if request.query["collection"] == "org.xmtp.inbox" else didcomm
        resp: web.Response = await paged(dids, 10)(request)
        return resp

    relay.route("com.atproto.sync.listReposByCollection", by_collection)
    await relay.start()
    async with aiohttp.ClientSession() as session:
        bf = await make_backfiller(db_pool, session, Options(attempts=1, host_rate=1000, allow_insecure_http=True))
        sources = default_sources(relay.base.replace("http://", "ws://"))
        # page 3 of the first collection fails: the job dies, two pages are saved
        with pytest.raises(FetchError):
            await bf.discover_all(sources)
        assert await bf.store.counts() == {"pending": 20}
        state = await bf.store.source(sources[0].key)
        assert state is not None and state.cursor == "c20" and not state.complete
        hits_before = len(relay.hits)
        await bf.discover_all(sources)  # resumes at the saved cursor
        resumed = [q.get("cursor") for _, q in relay.hits[hits_before:]]
        assert resumed[0] == "c20"
        assert all(q["limit"] == "2000" for _, q in relay.hits)
        assert await bf.store.counts() == {"pending": 32}  # union of both collections
        rows = await db_pool.fetch("SELECT did FROM backfill_repos ORDER BY id")
        assert [r["did"] for r in rows] == xmtp + didcomm[5:]
        hits_before = len(relay.hits)
        await bf.discover_all(sources)  # complete sources are not asked again
        assert len(relay.hits) == hits_before


async def test_whole_network_listing_is_refused_unless_asked_then_done(
    stubs: Callable[[], Stub], db_pool: asyncpg.Pool
) -> None:
    """Without the collection directory, listRepos would list the whole network: refused with an
    estimate unless `all_repos` (--all-repos) asks for it."""
    relay = stubs()

    async def unsupported(request: web.Request) -> web.Response:
        return web.json_response({"error": "MethodNotImplemented"}, status=501)

    everyone = [fake_did(100 + i) for i in range(7)]

    async def list_repos(request: web.Request) -> web.Response:
        resp: web.Response = await paged(everyone, 3)(request)
        body = json.loads(resp.body)  # type: ignore[arg-type]
        for r in body["repos"]:
            r["active"] = r["did"] != everyone[1]  # an inactive repo is not a candidate
        return web.json_response(body)

    relay.route("com.atproto.sync.listReposByCollection", unsupported)
    relay.route("com.atproto.sync.listRepos", list_repos)
    await relay.start()
    async with aiohttp.ClientSession() as session:
        bf = await make_backfiller(db_pool, session, dataclasses.replace(OPTS, host_rate=3.0))
        with pytest.raises(WholeNetworkRefused) as refused:
            await bf.discover_all(default_sources(relay.base))
        assert "40,000 requests (3.7 h at 3/s)" in str(refused.value) and "--all-repos" in str(refused.value)
        assert refused.value.code == 2 and "\n" not in str(refused.value)
        assert [n for n, _ in relay.hits].count("com.atproto.sync.listRepos") == 0
        bf = await make_backfiller(db_pool, session, dataclasses.replace(OPTS, all_repos=True))
        await bf.discover_all(default_sources(relay.base))
    rows = await db_pool.fetch("SELECT did, source FROM backfill_repos ORDER BY id")
    assert [r["did"] for r in rows] == [d for d in everyone if d != everyone[1]]
    assert {r["source"] for r in rows} == {f"repos:{relay.base}"}
    assert [n for n, _ in relay.hits].count("com.atproto.sync.listRepos") == 3  # listed once, not per collection


# --- manners -----------------------------------------------------------------------------


async def test_429_retry_after_is_obeyed_and_other_hosts_keep_going(stubs: Callable[[], Stub]) -> None:
    slow, fast = stubs(), stubs()
    answers = [429, 200]

    async def limited(request: web.Request) -> web.Response:
        status = answers.pop(0)
        if status == 429:
            return web.json_response({"error": "RateLimitExceeded"}, status=429, headers={"Retry-After": "1"})
        return web.json_response({"repos": []})

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"repos": []})

    slow.route("com.atproto.sync.listRepos", limited)
    fast.route("com.atproto.sync.listRepos", ok)
    await slow.start()
    await fast.start()
    async with aiohttp.ClientSession() as session:
        client = SyncClient(session, Options(workers=2, host_rate=1000, attempts=3, allow_insecure_http=True))
        t0 = time.monotonic()
        slow_call = asyncio.create_task(client.get(slow.base, "com.atproto.sync.listRepos", {}))
        await asyncio.sleep(0.2)
        status, _ = await client.get(fast.base, "com.atproto.sync.listRepos", {})
        fast_done = time.monotonic() - t0
        status_slow, _ = await slow_call
    assert status == 200 and status_slow == 200
    assert fast_done < 0.6  # the blocked host did not hold up the other one
    gap = slow.times[1] - slow.times[0]
    print(f"retry came {gap:.3f}s after the 429 (Retry-After: 1)")
    assert gap >= 0.99
    assert client.limiter.paused_seconds >= 0.99


async def test_https_is_required_unless_allowed() -> None:
    async with aiohttp.ClientSession() as session:
        client = SyncClient(session, Options())
        with pytest.raises(FetchError) as err:
            await client.get("http://127.0.0.1:1", "com.atproto.sync.listRepos", {})
    assert err.value.reason == "insecure_endpoint" and not err.value.retriable


# --- against the reference PDS -------------------------------------------------------------


def handle() -> str:
    return f"b{secrets.token_hex(4)}.test"


def cli_env(devnet: Devnet, dsn: str) -> dict[str, str]:
    return {
        **os.environ,
        "ATMX_DATABASE_URL": dsn,
        "ATMX_PLC_URL": devnet.plc_url,
        "ATMX_HANDLE_RESOLVER": devnet.pds_url,
        "ATMX_ALLOW_INSECURE_HTTP": "1",
        "ATMX_LOG_LEVEL": "WARNING",
    }


def atmx_backfill(devnet: Devnet, dsn: str, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "atmx.indexer.cli", "backfill", "--json", "--no-progress", *args]
    return subprocess.Popen(cmd, env=cli_env(devnet, dsn), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


async def bindings(pool: asyncpg.Pool, dids: list[str]) -> dict[tuple[str, str], tuple[str, str, str]]:
    rows = await pool.fetch(
        "SELECT did, protocol, cid, rev, status, indexed_at FROM bindings WHERE did = ANY($1::text[])", dids
    )
    return {(r["did"], r["protocol"]): (r["cid"], r["status"], str(r["indexed_at"])) for r in rows}


@pytest.mark.devnet
async def test_backfill_finds_existing_records_and_removes_deleted_ones(
    own_devnet: Devnet, db_dsn: str, db_pool: asyncpg.Pool
) -> None:
    devnet = own_devnet
    async with devnet.client() as pds:
        await backfill_finds_existing_records_and_removes_deleted_ones(devnet, pds, db_dsn, db_pool)


async def backfill_finds_existing_records_and_removes_deleted_ones(
    devnet: Devnet, pds: PdsClient, db_dsn: str, db_pool: asyncpg.Pool
) -> None:
    alice, bob, carol, dave = [await pds.create_account(handle()) for _ in range(4)]
    _, a_x = await pds.put_record(alice, "org.xmtp.inbox", "self", xmtp_inbox_record())
    _, a_d = await pds.put_record(alice, "at.didcomm.keyPackage", "self", key_package_record())
    _, b_x = await pds.put_record(bob, "org.xmtp.inbox", "self", xmtp_inbox_record())
    bad = xmtp_inbox_record()
    bad["id"] = "NOT-HEX"
    _, c_x = await pds.put_record(carol, "org.xmtp.inbox", "self", bad)
    await pds.create_post(dave, "no bindings here")
    mine = [alice.did, bob.did, carol.did, dave.did]

    result = finish(atmx_backfill(devnet, db_dsn, "--pds", devnet.pds_url))
    assert result["done"] == result["total"] == 4 and result["outcomes"] == {"ok": 4}
    first = await bindings(db_pool, mine)
    assert {k: v[:2] for k, v in first.items()} == {
        (alice.did, "xmtp"): (a_x, "pending"),
        (alice.did, "didcomm"): (a_d, "valid"),
        (bob.did, "xmtp"): (b_x, "pending"),
        (carol.did, "xmtp"): (c_x, "invalid"),
    }
    account = await db_pool.fetchrow("SELECT handle, handle_verified, rev, pds FROM accounts WHERE did = $1", alice.did)
    assert account["handle"] == alice.handle and account["handle_verified"] and account["rev"]
    assert await db_pool.fetchval("SELECT count(*) FROM accounts WHERE did = $1", dave.did) == 0

    # rerun: nothing to do, nothing changes
    again = finish(atmx_backfill(devnet, db_dsn, "--pds", devnet.pds_url))
    assert again["discovered"] == 0 and again["outcomes"] == {}
    assert await bindings(db_pool, mine) == first

    # bob deletes his record while atmx is down; a fresh pass removes it (proof of absence)
    await pds.delete_record(bob, "org.xmtp.inbox", "self")
    redo = finish(atmx_backfill(devnet, db_dsn, "--pds", devnet.pds_url, "--restart"))
    assert redo["done"] == redo["total"]
    after = await bindings(db_pool, mine)
    assert (bob.did, "xmtp") not in after
    # the others were re-fetched at the same rev: not rewritten (indexed_at unchanged)
    assert {k: v for k, v in after.items()} == {k: v for k, v in first.items() if k != (bob.did, "xmtp")}

    # targeted runs and status
    finish(atmx_backfill(devnet, db_dsn, "--did", alice.did, "--restart"))
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "atmx.indexer.cli", "status", "--json"],
        env=cli_env(devnet, db_dsn),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    status = json.loads(out.stdout)
    assert status["backfill"]["done"] >= 4 and status["backfill"]["pending"] == 0
    counts = {(b["protocol"], b["status"]): b["count"] for b in status["bindings"]}
    assert counts[("xmtp", "invalid")] >= 1


async def seed_accounts(pds: PdsClient, n: int) -> dict[str, dict[str, str]]:
    """n accounts, each with an XMTP inbox and every other one with a key package too."""
    accounts: list[Account] = await asyncio.gather(*(pds.create_account(handle()) for _ in range(n)))
    expected: dict[str, dict[str, str]] = {}
    for i, acct in enumerate(accounts):
        _, x = await pds.put_record(acct, "org.xmtp.inbox", "self", xmtp_inbox_record())
        expected[acct.did] = {"xmtp": x}
        if i % 2 == 0:
            _, d = await pds.put_record(acct, "at.didcomm.keyPackage", "self", key_package_record())
            expected[acct.did]["didcomm"] = d
    return expected


@pytest.mark.devnet
@pytest.mark.slow
async def test_killed_job_resumes_to_the_same_index(
    devnet: Devnet, pds: PdsClient, db_dsn: str, db_pool: asyncpg.Pool
) -> None:
    expected = await seed_accounts(pds, 30)
    dids = list(expected)
    dids_file = Path(f"/tmp/atmx-test-dids-{os.getpid()}.txt")
    await asyncio.to_thread(dids_file.write_text, "\n".join(dids) + "\n")
    try:
        # slow enough (10 requests/s, 2 per repo) to be killed in the middle
        slow = ("--dids-file", str(dids_file), "--host-rate", "10", "--workers", "2")
        proc = atmx_backfill(devnet, db_dsn, *slow)
        deadline = time.monotonic() + 60
        done = 0
        while time.monotonic() < deadline:
            done = await db_pool.fetchval("SELECT count(*) FROM backfill_repos WHERE state = 'done'")
            if done >= 8:
                break
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = await db_pool.fetchval("SELECT count(*) FROM backfill_repos WHERE state = 'done'")
        assert 8 <= done < 30, "the job was not killed halfway"
        result = finish(atmx_backfill(devnet, db_dsn, "--dids-file", str(dids_file)))
        assert result["total"] == 30 and result["done"] == 30
        assert sum(result["outcomes"].values()) == 30 - done  # only the rest was fetched
    finally:
        await asyncio.to_thread(dids_file.unlink)
    rows = await db_pool.fetch("SELECT did, protocol, cid FROM bindings WHERE did = ANY($1::text[])", dids)
    got: dict[str, dict[str, str]] = {}
    for r in rows:
        got.setdefault(r["did"], {})[r["protocol"]] = r["cid"]
    assert got == expected  # what an uninterrupted run produces: every record, nothing else


# --- live and backfill in one process ---------------------------------------------------------


def devnet_settings(devnet: Devnet, **kw: Any) -> Settings:
    return Settings(
        relay=devnet.firehose_url,
        plc_url=devnet.plc_url,
        handle_resolver=devnet.pds_url,
        allow_insecure_http=True,
        stall_timeout=3600,
        **kw,
    )


async def wait_for(what: str, check: Callable[[], Any], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.devnet
async def test_live_events_win_by_rev_over_a_concurrent_backfill(
    devnet: Devnet, pds: PdsClient, db_pool: asyncpg.Pool
) -> None:
    erin = await pds.create_account(handle())
    await pds.put_record(erin, "org.xmtp.inbox", "self", xmtp_inbox_record())
    settings = devnet_settings(devnet)
    async with aiohttp.ClientSession() as session:
        indexer = Indexer(settings, Store(db_pool), session)
        await indexer.start()
        running = asyncio.create_task(run_indexer(settings, indexer, db_pool, session))
        try:
            await asyncio.wait_for(indexer.stream.connected.wait(), 10)
            async with backfiller(settings, db_pool, session, resolver=indexer.resolver) as bf:
                # the backfill proves v1 ...
                stale = await bf.fetch_repo(erin.did)
                assert [b.protocol for b in stale.upserts] == ["xmtp"]
                # ... then a live update lands before the backfill result is written
                _, v2 = await pds.put_record(erin, "org.xmtp.inbox", "self", xmtp_inbox_record())

                async def cid() -> Any:
                    return await db_pool.fetchval(
                        "SELECT cid FROM bindings WHERE did = $1 AND protocol = 'xmtp'", erin.did
                    )

                await wait_for("the live update", lambda: _eq(cid, v2))
                await bf.store.record(stale, erin.did, "done", None)
                assert await cid() == v2
                # a live delete is not undone by the stale proof of presence either
                await pds.delete_record(erin, "org.xmtp.inbox", "self")
                await wait_for("the live delete", lambda: _eq(cid, None))
                await bf.store.record(stale, erin.did, "done", None)
                assert await cid() is None
                # and a fresh backfill agrees with the live index
                fresh = await bf.fetch_repo(erin.did)
                single = {f.nsid for f in FAMILIES if f.single}  # every one-record family: proven absent
                assert fresh.upserts == [] and {d.collection for d in fresh.deletes} == single
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)


async def _eq(get: Callable[[], Any], value: Any) -> bool:
    return bool(await get() == value)


@pytest.mark.devnet
async def test_gap_repair_drains_the_resync_queue(devnet: Devnet, pds: PdsClient, db_pool: asyncpg.Pool) -> None:
    fay = await pds.create_account(handle())
    _, x = await pds.put_record(fay, "org.xmtp.inbox", "self", xmtp_inbox_record())
    ghost = fake_did(999)  # not in the PLC: cannot be repaired, must not be retried forever
    await db_pool.execute(
        "INSERT INTO resync_queue (did, reason, queued_at) VALUES ($1, 'sync_event', now() - interval '1 hour'), "
        "($2, 'missed_commit', now() - interval '1 hour')",
        fay.did,
        ghost,
    )
    settings = devnet_settings(devnet)
    async with aiohttp.ClientSession() as session, backfiller(settings, db_pool, session) as bf:
        task = asyncio.create_task(GapRepair(bf, poll=0.05).run())
        try:

            async def drained() -> bool:
                return bool(await db_pool.fetchval("SELECT count(*) FROM resync_queue") == 0)

            await wait_for("the queue drained", drained)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert await db_pool.fetchval("SELECT cid FROM bindings WHERE did = $1", fay.did) == x


async def test_outdated_cursor_queues_every_candidate(db_pool: asyncpg.Pool) -> None:
    outdated = (FRAMES / "42-outdated-cursor-info.bin").read_bytes()
    known = [fake_did(i) for i in range(3)]
    await db_pool.execute("INSERT INTO accounts (did) VALUES ($1), ($2)", known[0], known[1])
    await BackfillStore(db_pool).add([known[1], known[2]], "test")

    async def script(ws: ServerConnection) -> None:
        await ws.send(outdated)
        await asyncio.sleep(30)

    server = await serve(script, "127.0.0.1", 0)
    port = next(iter(server.sockets)).getsockname()[1]
    store = BackfillStore(db_pool)
    queued = asyncio.Event()

    async def on_outdated() -> int:
        n = await store.queue_all("outdated_cursor")
        queued.set()
        return n

    class Ignore:
        def wants(self, did: str) -> bool:
            return False

        def offer(self, ev: object) -> bool:
            return False

        async def wait_room(self) -> None:
            return None

    fs = FirehoseStream(f"ws://127.0.0.1:{port}", Ignore(), lambda: None, on_outdated_cursor=on_outdated)
    task = asyncio.create_task(fs.run())
    try:
        await asyncio.wait_for(queued.wait(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        server.close()
    rows = await db_pool.fetch("SELECT did, reason FROM resync_queue ORDER BY did")
    assert sorted(r["did"] for r in rows) == sorted(known)
    assert {r["reason"] for r in rows} == {"outdated_cursor"}


async def test_health_reports_backfill_progress(db_pool: asyncpg.Pool) -> None:
    from atmx.api.handlers import health

    _, body = await health(lambda: db_pool, "1.0")
    assert "backfill" not in body  # nothing asked for yet
    store = BackfillStore(db_pool)
    await store.add([fake_did(1), fake_did(2)], "test")
    await store.record(None, fake_did(1), "done", None)
    await db_pool.execute("INSERT INTO resync_queue (did, reason) VALUES ($1, 'sync_event')", fake_did(3))
    status, body = await health(lambda: db_pool, "1.0")
    assert status == 200
    b = body["backfill"]
    assert (b["repos"], b["done"], b["pending"], b["resyncQueue"], b["complete"]) == (2, 1, 1, 1, False)
