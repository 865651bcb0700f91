"""api/request_index.py: an app asks, atmx fetches with proof, within per-client and per-account limits."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pipeline_harness import XMTP, Harness, xmtp_record

from atmx.api.app import create_app
from atmx.api.ratelimit import RatePolicy
from atmx.api.request_index import RequestIndexer

URL = "/xrpc/directory.atmx.requestIndex"


@pytest.fixture
async def client(harness: Harness) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    indexer = RequestIndexer(
        harness.pool,
        harness.backfiller.resolver,
        harness.backfiller.fetcher,
        client_limit=RatePolicy(3, 60.0),
        did_interval=60.0,
    )
    app = create_app(pool_provider=lambda: harness.pool, version="1", change_stream=False, request_indexer=indexer)
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_a_request_indexes_the_account_with_proof(
    client: TestClient[web.Request, web.Application], harness: Harness
) -> None:
    repo = harness.new_repo()
    record = xmtp_record()
    repo.put(XMTP, record)  # written at the PDS; atmx has seen nothing of it
    resp = await client.post(URL, json={"actor": repo.did})
    body = await resp.json()
    assert resp.status == 200 and body["indexed"] is True and body["did"] == repo.did
    assert body["identity"]["xmtp"]["inboxId"] == record["id"]
    assert await harness.pool.fetchval("SELECT count(*) FROM binding_proofs") == 1


async def test_an_account_is_fetched_at_most_once_per_interval(
    client: TestClient[web.Request, web.Application], harness: Harness
) -> None:
    repo = harness.new_repo()
    repo.put(XMTP, xmtp_record())
    await client.post(URL, json={"actor": repo.did})
    harness.pds.down = True  # a second fetch would now fail: none is made
    resp = await client.post(URL, json={"actor": repo.did})
    body = await resp.json()
    assert resp.status == 200 and body["indexed"] is True and "identity" in body


async def test_a_client_past_its_limit_is_refused(client: TestClient[web.Request, web.Application]) -> None:
    statuses = []
    for _ in range(4):
        resp = await client.post(URL, json={"actor": "did:plc:" + "a" * 24})
        statuses.append(resp.status)
    assert statuses[:3] != [429] * 3 and statuses[3] == 429


@pytest.mark.parametrize("body", [{"actor": "not an actor"}, {"actor": ["did:plc:x"]}, {}, [1], "x"])
async def test_malformed_input_is_refused(client: TestClient[web.Request, web.Application], body: object) -> None:
    resp = await client.post(URL, json=body)
    assert resp.status == 400 and (await resp.json())["error"] == "InvalidRequest"


async def test_only_json_is_read_and_only_so_much(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.post(URL, data=b"actor=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 400
    resp = await client.post(URL, data=b"{" + b" " * 10_000 + b"}", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    resp = await client.get(URL)
    assert resp.status == 405
