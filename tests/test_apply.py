"""indexer/store/apply.py: a batch of write sets applied in one transaction on a real PostgreSQL,
with the change log and the binding history written alongside."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import asyncpg

from atmx.indexer.index.batch import Change
from atmx.indexer.index.writes import BindingRow, IdentityUpdate, Proof, Rejection, WriteSet
from atmx.indexer.store.apply import append_changes, apply_writes, storable_text

NOW = datetime(2026, 11, 1, tzinfo=UTC)
DID = "did:plc:" + "a" * 24
RECORD = {"id": "b" * 64, "verificationSignature": "c2ln", "createdAt": "2026-11-01T00:00:00Z"}


def row(rev: str, did: str = DID) -> BindingRow:
    proof = Proof(b"\x0acar", "did:key:zQ3sh", "https://pds.test")
    return BindingRow(
        did, "org.xmtp.inbox", "self", "xmtp", "bafyone", rev, RECORD, "pending", None, "b" * 64, None, proof=proof
    )


def test_storable_text_replaces_nul() -> None:
    assert storable_text("a\x00b") == "a\ufffdb" and storable_text(None) is None


async def test_a_batch_writes_accounts_bindings_proofs_history_and_changes(db_pool: asyncpg.Pool) -> None:
    ws = WriteSet(did=DID, seq=5, create_account=True, repo_state=("3kb", "bafydata"), upserts=[row("3kb")])
    ws.identity = IdentityUpdate("alice.test", True, "https://pds.test")
    async with db_pool.acquire() as conn, conn.transaction():
        assert await apply_writes(conn, [ws], NOW) == {}
    account = await db_pool.fetchrow(
        "SELECT rev, data_cid, handle, handle_verified, pds FROM accounts WHERE did = $1", DID
    )
    assert tuple(account) == ("3kb", "bafydata", "alice.test", True, "https://pds.test")
    binding = await db_pool.fetchrow("SELECT status, rev, record FROM bindings WHERE did = $1", DID)
    assert (binding["status"], binding["rev"], binding["record"]) == ("pending", "3kb", RECORD)
    assert await db_pool.fetchval("SELECT count(*) FROM binding_proofs") == 1
    assert [r["action"] for r in await db_pool.fetch("SELECT action FROM binding_history")] == ["create"]
    kinds = [r["kind"] for r in await db_pool.fetch("SELECT kind FROM changes ORDER BY seq")]
    assert kinds == ["handle", "binding"]


async def test_a_repo_another_writer_moved_further_is_reported(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn, conn.transaction():
        await apply_writes(conn, [WriteSet(did=DID, create_account=True, repo_state=("3kd", "bafynew"))], NOW)
    async with db_pool.acquire() as conn, conn.transaction():
        assert await apply_writes(conn, [WriteSet(did=DID, repo_state=("3kb", "bafyold"))], NOW) == {DID: "3kd"}
    assert await db_pool.fetchval("SELECT rev FROM accounts WHERE did = $1", DID) == "3kd"


async def test_rejections_and_repairs_of_any_repo(db_pool: asyncpg.Pool) -> None:
    ws = WriteSet(did=DID, seq=9, rejections=[Rejection("commit", "bad_signature", "rev 3kb: \x00")])
    ws.resync_reason = "missed_commit"
    async with db_pool.acquire() as conn, conn.transaction():
        await apply_writes(conn, [ws], NOW)
    rejection = await db_pool.fetchrow("SELECT seq, reason, detail FROM rejections WHERE did = $1", DID)
    assert tuple(rejection) == (9, "bad_signature", "rev 3kb: \ufffd")
    assert await db_pool.fetchval("SELECT reason FROM resync_queue WHERE did = $1", DID) == "missed_commit"
    assert await db_pool.fetchval("SELECT count(*) FROM accounts") == 0  # no account for a stranger


async def test_changes_get_increasing_seqs(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn, conn.transaction():
        await append_changes(
            conn, [Change(DID, "account", {"did": DID, "active": False}), Change(DID, "handle", {"did": DID})]
        )
    rows = await db_pool.fetch("SELECT seq, kind, body FROM changes ORDER BY seq")
    assert [r["kind"] for r in rows] == ["account", "handle"] and rows[0]["seq"] < rows[1]["seq"]
    body = rows[0]["body"]
    assert (json.loads(body) if isinstance(body, str) else body) == {"did": DID, "active": False}


async def test_nothing_to_apply(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        assert await apply_writes(conn, [], NOW) == {}
