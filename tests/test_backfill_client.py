"""indexer/backfill/client.py: GETs to sync endpoints, retried on 429/5xx and network errors,
answered as they are otherwise. (Per-host pacing across hosts is test_job.py's.)"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from metric_samples import sample

from atmx.indexer.backfill import client as client_mod
from atmx.indexer.backfill.client import FetchError, Options, SyncClient, http_base, xrpc_error
from atmx.indexer.config import Settings

NSID = "com.atproto.sync.getRecord"
FAST = Options(host_rate=10_000, host_burst=100, attempts=3, timeout=2.0, allow_insecure_http=True)


class Host:
    def __init__(self) -> None:
        self.statuses: list[int] = []  # answered in turn; 200 with `body` once they run out
        self.body = b'{"ok": true}'
        self.calls = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, body=self.body if status == 200 else b'{"error": "RepoNotFound"}')


@pytest.fixture
async def host(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Host, str]]:
    monkeypatch.setattr(client_mod, "BACKOFF_START", 0.001)
    fake = Host()
    app = web.Application()
    app.router.add_get(f"/xrpc/{NSID}", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield fake, f"http://127.0.0.1:{server.port}"
    await server.close()


def test_http_base() -> None:
    assert http_base("wss://bsky.network/xrpc/com.atproto.sync.subscribeRepos") == "https://bsky.network"
    assert http_base("ws://127.0.0.1:2583") == "http://127.0.0.1:2583"
    assert http_base(" pds.example.com/ ") == "https://pds.example.com"


def test_xrpc_error() -> None:
    assert xrpc_error(b'{"error": "RepoNotFound", "message": "x"}') == "RepoNotFound"
    assert xrpc_error(b"not json") == "" and xrpc_error(b"[1]") == "" and xrpc_error(b"{}") == ""


def test_options_from_settings() -> None:
    settings = Settings(
        backfill_workers=3,
        backfill_host_rate=1.5,
        backfill_host_burst=2,
        backfill_host_concurrency=1,
        allow_insecure_http=True,
    )
    opts = Options.from_settings(settings)
    assert (opts.workers, opts.host_rate, opts.host_burst, opts.host_concurrency) == (3, 1.5, 2, 1)
    assert opts.allow_insecure_http and opts.attempts == Options().attempts


async def test_transient_answers_are_retried(host: tuple[Host, str]) -> None:
    fake, base = host
    fake.statuses = [503, 502]
    before = sample("atmx_backfill_requests_total", method=NSID, result="503")
    async with aiohttp.ClientSession() as session:
        assert await SyncClient(session, FAST).get(base, NSID, {"did": "did:plc:x"}) == (200, fake.body)
    assert fake.calls == 3
    assert sample("atmx_backfill_requests_total", method=NSID, result="503") == before + 1


async def test_other_answers_come_back_as_they_are(host: tuple[Host, str]) -> None:
    fake, base = host
    fake.statuses = [400, 501]
    async with aiohttp.ClientSession() as session:
        client = SyncClient(session, FAST)
        status, body = await client.get(base, NSID, {})
        assert (status, xrpc_error(body)) == (400, "RepoNotFound")
        assert (await client.get(base, NSID, {}))[0] == 501  # Not Implemented is an answer
    assert fake.calls == 2


async def test_giving_up_after_the_attempts(host: tuple[Host, str]) -> None:
    fake, base = host
    fake.statuses = [500] * 5
    async with aiohttp.ClientSession() as session:
        with pytest.raises(FetchError) as e:
            await SyncClient(session, FAST).get(base, NSID, {})
    assert (e.value.reason, e.value.retriable, fake.calls) == ("unreachable", True, 3)
    assert "HTTP 500 after 3 attempts" in str(e.value)


async def test_a_body_over_the_cap_is_not_retried(host: tuple[Host, str], monkeypatch: pytest.MonkeyPatch) -> None:
    fake, base = host
    monkeypatch.setattr(client_mod, "MAX_BODY", 8)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(FetchError) as e:
            await SyncClient(session, FAST).get(base, NSID, {})
    assert (e.value.reason, e.value.retriable, fake.calls) == ("too_large", False, 1)


async def test_network_errors_are_retried_then_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_mod, "BACKOFF_START", 0.001)
    opts = Options(host_rate=10_000, attempts=2, timeout=1.0, allow_insecure_http=True)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(FetchError) as e:
            await SyncClient(session, opts).get("http://127.0.0.1:9", NSID, {})  # nothing listens on discard
    assert e.value.reason == "unreachable" and "after 2 attempts" in str(e.value)
