"""store/provenance.py: a binding's proof and its history read from a real PostgreSQL, hidden
accounts left out, history newest first and paged by id."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
from forge import RepoBuilder, SigningKey
from sample_records import keypackage_record

from atmx.indexer.index.plan import plan_record
from atmx.indexer.index.writes import BindingRow, Proof, RecordDelete, StatusUpdate, WriteSet
from atmx.indexer.repo.verify import verify_record_proof
from atmx.indexer.store.index_store import Store
from atmx.indexer.store.provenance import get_history, get_proof

DID = "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb"
PATH = "at.didcomm.keyPackage/self"
URI = f"at://{DID}/{PATH}"


async def index_version(store: Store, repo: RepoBuilder) -> tuple[str, str, bytes]:
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
    return proof.cid, proof.rev, car


async def test_the_current_proof_and_the_history(db_pool: asyncpg.Pool) -> None:
    store = Store(db_pool)
    repo = RepoBuilder(DID, SigningKey.generate())
    repo.put(PATH, keypackage_record("phone"))
    first_cid, _, _ = await index_version(store, repo)
    repo.put(PATH, keypackage_record("laptop"))
    cid, rev, car = await index_version(store, repo)

    proof = await get_proof(db_pool, URI)
    assert proof is not None
    assert (proof.cid, proof.rev, proof.car, proof.pds) == (cid, rev, car, "https://pds")
    assert proof.signing_key == repo.key.did_key
    assert await get_proof(db_pool, f"at://{DID}/at.didcomm.keyPackage/other") is None

    versions = await get_history(db_pool, DID, None, before_id=None, limit=10)
    assert [(v.cid, v.action) for v in versions] == [(cid, "update"), (first_cid, "create")]
    assert versions[0].id > versions[1].id and versions[0].projection["label"] == "laptop"
    older = await get_history(db_pool, DID, None, before_id=versions[0].id, limit=10)
    assert [v.cid for v in older] == [first_cid]
    assert await get_history(db_pool, DID, "xmtp", before_id=None, limit=10) == []

    repo.delete(PATH)
    assert repo.rev is not None
    await store.apply([WriteSet(did=DID, deletes=[RecordDelete("at.didcomm.keyPackage", "self", repo.rev)])], None)
    assert await get_proof(db_pool, URI) is None
    assert [v.action for v in await get_history(db_pool, DID, None, before_id=None, limit=1)] == ["delete"]


async def test_a_hidden_account_shows_neither(db_pool: asyncpg.Pool) -> None:
    store = Store(db_pool)
    repo = RepoBuilder(DID, SigningKey.generate())
    repo.put(PATH, keypackage_record())
    await index_version(store, repo)
    await store.apply([WriteSet(did=DID, status=StatusUpdate(active=False, status="takendown"))], None)
    assert await get_proof(db_pool, URI) is None
    assert await get_history(db_pool, DID, None, before_id=None, limit=10) == []
