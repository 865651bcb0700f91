"""indexer/backfill/fetch.py: one repo's indexed records fetched with proof, against a loopback
PLC and PDS (tests/pipeline_harness.py) that answer as the reference ones do."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from forge import RepoBuilder, SigningKey
from pipeline_harness import DIDCOMM, XMTP, Pds, Plc, keypackage_record, xmtp_record

from atmx.indexer.backfill import fetch as fetch_mod
from atmx.indexer.backfill.client import FetchError, Options, SyncClient
from atmx.indexer.backfill.fetch import RepoFetcher
from atmx.indexer.identity.resolver import IdentityResolver


@dataclass
class Net:
    plc: Plc
    pds: Pds
    fetcher: RepoFetcher

    def new_repo(self) -> RepoBuilder:
        did = "did:plc:" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(24))
        key = SigningKey.generate()
        self.plc.register(did, key, "alice.test")
        repo = self.pds.repos[did] = RepoBuilder(did, key)
        return repo


async def _serve(app: web.Application) -> TestServer:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
async def net() -> AsyncIterator[Net]:
    plc, pds = Plc(), Pds()
    plc_app, pds_app = web.Application(), web.Application()
    plc_app.router.add_get("/{did}", plc.handle)
    pds_app.router.add_get("/xrpc/com.atproto.sync.getRecord", pds.get_record)
    pds_app.router.add_get("/xrpc/com.atproto.repo.listRecords", pds.list_records)
    plc_server, pds_server = await _serve(plc_app), await _serve(pds_app)
    plc.url, plc.pds_url = f"http://127.0.0.1:{plc_server.port}", f"http://127.0.0.1:{pds_server.port}"
    async with aiohttp.ClientSession() as session:
        resolver = IdentityResolver(plc.url, session=session, handle_resolver=plc.url, allow_insecure_http=True)
        client = SyncClient(session, Options(host_rate=10_000, host_burst=10_000, attempts=1, allow_insecure_http=True))
        yield Net(plc, pds, RepoFetcher(resolver, client))
    await pds_server.close()
    await plc_server.close()


async def test_every_indexed_record_comes_with_its_proof(net: Net) -> None:
    repo = net.new_repo()
    repo.put(XMTP, xmtp_record())
    repo.put(DIDCOMM, keypackage_record())
    ws = await net.fetcher.fetch_repo(repo.did)
    assert sorted(u.protocol for u in ws.upserts) == ["didcomm", "xmtp"]
    assert all(u.proof is not None and u.proof.car and u.proof.pds == net.plc.pds_url for u in ws.upserts)
    assert ws.repo_state is not None and ws.repo_state[0] == repo.rev
    # the single-record families it has no record of are proven absent: deletes
    assert {d.collection for d in ws.deletes} >= {"com.germnetwork.declaration", "blue.catbird.chat.declaration"}
    assert ws.identity is not None and ws.identity.pds == net.plc.pds_url


async def test_a_repo_without_records_proves_each_one_absent(net: Net) -> None:
    repo = net.new_repo()
    repo.put("app.bsky.feed.post/1", {"t": 1})
    ws = await net.fetcher.fetch_repo(repo.did)
    assert ws.upserts == [] and ws.identity is None
    assert {d.rkey for d in ws.deletes} == {"self"}


async def test_a_repo_the_pds_does_not_have(net: Net) -> None:
    repo = net.new_repo()
    del net.pds.repos[repo.did]
    with pytest.raises(FetchError) as e:
        await net.fetcher.fetch_repo(repo.did)
    assert (e.value.reason, e.value.retriable) == ("repo_not_found", False)


async def test_an_unknown_did_and_an_unreachable_plc(net: Net) -> None:
    with pytest.raises(FetchError) as e:
        await net.fetcher.fetch_repo("did:plc:" + "z" * 24)
    assert (e.value.reason, e.value.retriable) == ("identity_not_found", False)
    repo = net.new_repo()
    net.plc.down = True
    with pytest.raises(FetchError) as e:
        await net.fetcher.fetch_repo(repo.did)
    assert (e.value.reason, e.value.retriable) == ("identity_unreachable", True)


async def test_a_pds_in_trouble_is_retriable(net: Net) -> None:
    repo = net.new_repo()
    net.pds.down = True
    with pytest.raises(FetchError) as e:
        await net.fetcher.fetch_repo(repo.did)
    assert e.value.retriable


def test_record_list_pages() -> None:
    did, collection = "did:plc:x", "blue.catbird.chat.device"
    prefix = f"at://{did}/{collection}/"
    body = (
        b'{"records": [{"uri": "'
        + prefix.encode()
        + b'a1"}, {"uri": "at://did:plc:other/'
        + collection.encode()
        + b'/b2"}, {"uri": "'
        + prefix.encode()
        + b'bad key!"}, 7], "cursor": "next"}'
    )
    assert fetch_mod._parse_records_page(body, did, collection) == (["a1"], "next")
    assert fetch_mod._parse_records_page(b'{"records": []}', did, collection) == ([], None)
    for bad in (b"not json", b'{"records": 3}', b"[]"):
        with pytest.raises(FetchError) as e:
            fetch_mod._parse_records_page(bad, did, collection)
        assert e.value.reason == "bad_response"
