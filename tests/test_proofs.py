"""api/proofs.py: the proof atmx kept for a binding, served as a CAR that verifies on its own, and
the binding's history, paged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from forge import RepoBuilder, SigningKey
from pipeline_harness import keypackage_record
from seed import seed_account

from atmx.api.app import create_app
from atmx.indexer.index.plan import plan_record
from atmx.indexer.index.writes import BindingRow, Proof, StatusUpdate, WriteSet
from atmx.indexer.repo.verify import verify_record_proof
from atmx.indexer.store.index_store import Store

DID = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"
PATH = "at.didcomm.keyPackage/self"


@pytest.fixture
async def client(db_pool: asyncpg.Pool) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = create_app(pool_provider=lambda: db_pool, version="1", change_stream=False)
    async with TestClient(TestServer(app)) as c:
        yield c


async def index_version(store: Store, repo: RepoBuilder) -> str:
    """Index the repo's current record as the backfill does: a getRecord proof, planned and applied."""
    car = repo.record_car(PATH)
    proof = verify_record_proof(
        did=DID,
        collection="at.didcomm.keyPackage",
        rkey="self",
        car=car,
        key=repo.key.public_key,
        now=datetime.now(UTC),
    )
    assert proof.cid is not None
    row, _ = plan_record(DID, proof.rev, PATH, proof.cid, proof.block, Proof(car, repo.key.did_key, "https://pds"))
    assert isinstance(row, BindingRow)
    await store.apply([WriteSet(did=DID, create_account=True, upserts=[row])], None)
    return proof.cid


async def test_a_proof_is_served_as_verified_and_checks_alone(
    client: TestClient[web.Request, web.Application], db_pool: asyncpg.Pool
) -> None:
    repo = RepoBuilder(DID, SigningKey.generate())
    repo.put(PATH, keypackage_record())
    cid = await index_version(Store(db_pool), repo)
    resp = await client.get("/xrpc/directory.atmx.getBindingProof", params={"uri": f"at://{DID}/{PATH}"})
    assert resp.status == 200 and resp.content_type == "application/vnd.ipld.car"
    car = await resp.read()
    assert resp.headers["Atmx-Cid"] == cid and resp.headers["Atmx-Rev"] == repo.rev
    assert resp.headers["Atmx-Signing-Key"] == repo.key.did_key and resp.headers["Atmx-Pds"] == "https://pds"
    assert "Atmx-Signing-Key" in resp.headers["Access-Control-Expose-Headers"]
    key = repo.key.public_key
    again = verify_record_proof(
        did=DID, collection="at.didcomm.keyPackage", rkey="self", car=car, key=key, now=datetime.now(UTC)
    )
    assert again.cid == cid
    # a hidden account's proof is not served, like everything else of it
    await Store(db_pool).apply([WriteSet(did=DID, status=StatusUpdate(False, "takendown"))], None)
    resp = await client.get("/xrpc/directory.atmx.getBindingProof", params={"uri": f"at://{DID}/{PATH}"})
    assert resp.status == 400 and (await resp.json())["error"] == "ProofNotFound"


@pytest.mark.parametrize(
    "uri", ["at://did:plc:x", "did:plc:x/a.b.c/self", f"at://{DID}/not an nsid/self", f"at://{DID}/a.b.c/self/x"]
)
async def test_a_malformed_uri_is_refused(client: TestClient[web.Request, web.Application], uri: str) -> None:
    resp = await client.get("/xrpc/directory.atmx.getBindingProof", params={"uri": uri})
    assert resp.status == 400 and (await resp.json())["error"] == "InvalidRequest"


async def test_history_is_newest_first_and_paged(
    client: TestClient[web.Request, web.Application], db_pool: asyncpg.Pool
) -> None:
    store, repo = Store(db_pool), RepoBuilder(DID, SigningKey.generate())
    cids = []
    for _ in range(3):
        repo.put(PATH, keypackage_record())
        cids.append(await index_version(store, repo))
    await seed_account(db_pool, "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb")  # another account: not in the answer
    resp = await client.get("/xrpc/directory.atmx.getBindingHistory", params={"did": DID, "limit": "2"})
    page = await resp.json()
    assert [v["cid"] for v in page["versions"]] == [cids[2], cids[1]]
    assert [v["action"] for v in page["versions"]] == ["update", "update"]
    resp = await client.get("/xrpc/directory.atmx.getBindingHistory", params={"did": DID, "cursor": page["cursor"]})
    rest = await resp.json()
    assert [(v["action"], v["cid"]) for v in rest["versions"]] == [("create", cids[0])] and "cursor" not in rest
    for bad in ({"did": "nope"}, {"did": DID, "protocol": "smtp"}, {"did": DID, "cursor": "x"}):
        resp = await client.get("/xrpc/directory.atmx.getBindingHistory", params=bad)
        assert resp.status == 400
