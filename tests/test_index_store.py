from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import asyncpg

from atmx.indexer.index.writes import (
    BindingRow,
    CursorUpdate,
    IdentityUpdate,
    Rejection,
    StatusUpdate,
    WriteSet,
)
from atmx.indexer.store.index_store import RepoState, Store

DID = "did:plc:abcdefghijklmnopqrstuvwx"


def binding(rev: str, cid: str = "bafyone", status: str = "pending") -> BindingRow:
    return BindingRow(
        protocol="xmtp",
        uri=f"at://{DID}/org.xmtp.inbox/self",
        cid=cid,
        rev=rev,
        record={"id": "ab" * 32, "verificationSignature": "A" * 86 + "==", "createdAt": "2026-01-01T00:00:00Z"},
        status=status,
        reason=None,
        xmtp_inbox_id="ab" * 32,
        created_at="2026-01-01T00:00:00Z",
    )


async def test_apply_creates_account_binding_and_cursor_atomically(db_pool: asyncpg.Pool) -> None:
    store = Store(db_pool)
    ws = WriteSet(
        did=DID,
        seq=7,
        create_account=True,
        repo_state=("3kaaaaaaaaa22", "bafydata"),
        identity=IdentityUpdate(handle="alice.test", handle_verified=True, pds="http://pds"),
        upserts=[binding("3kaaaaaaaaa22")],
    )
    await store.apply([ws], CursorUpdate("wss://relay", 7, datetime(2026, 1, 1, tzinfo=UTC)))
    acct = await store.account(DID)
    assert acct is not None
    assert (acct.rev, acct.data_cid, acct.handle, acct.handle_verified) == (
        "3kaaaaaaaaa22",
        "bafydata",
        "alice.test",
        True,
    )
    assert await store.load_cursor("wss://relay") == 7
    assert await store.tracked_dids() == {DID}
    assert await store.repo_state(DID) == RepoState("3kaaaaaaaaa22", "bafydata", "3kaaaaaaaaa22")
    row = await db_pool.fetchrow("SELECT * FROM bindings WHERE did = $1", DID)
    assert row["status"] == "pending" and row["record"]["id"] == "ab" * 32


async def test_older_rev_changes_nothing(db_pool: asyncpg.Pool) -> None:
    store = Store(db_pool)
    await store.apply([WriteSet(did=DID, create_account=True, upserts=[binding("3kbbbbbbbbb22", cid="bafynew")])], None)
    await store.apply([WriteSet(did=DID, upserts=[binding("3kaaaaaaaaa22", cid="bafyold")])], None)
    await store.apply([WriteSet(did=DID, deletes=[("xmtp", "3kaaaaaaaaa22")])], None)
    assert await db_pool.fetchval("SELECT cid FROM bindings WHERE did = $1", DID) == "bafynew"
    await store.apply([WriteSet(did=DID, deletes=[("xmtp", "3kccccccccc22")])], None)
    assert await db_pool.fetchval("SELECT count(*) FROM bindings") == 0


async def test_reverification_is_kept_only_for_the_same_record(db_pool: asyncpg.Pool) -> None:
    store = Store(db_pool)
    await store.apply([WriteSet(did=DID, create_account=True, upserts=[binding("3kaaaaaaaaa22")])], None)
    await db_pool.execute("UPDATE bindings SET status='verified', verified_at=now(), xmtp_env='dev'")
    await store.apply([WriteSet(did=DID, upserts=[binding("3kbbbbbbbbb22", cid="bafytwo")])], None)
    row = await db_pool.fetchrow("SELECT status, verified_at, xmtp_env FROM bindings")
    assert (row["status"], row["verified_at"], row["xmtp_env"]) == ("pending", None, None)


async def test_cursor_never_moves_backwards(db_pool: asyncpg.Pool) -> None:
    store = Store(db_pool)
    await store.save_cursor(CursorUpdate("u", 50, None))
    await store.apply([], CursorUpdate("u", 40, None))
    assert await store.load_cursor("u") == 50
    await store.save_cursor(CursorUpdate("u", 60, None))
    assert await store.load_cursor("u") == 60
    assert await store.load_cursor("other") is None


async def test_status_rejection_and_resync(db_pool: asyncpg.Pool) -> None:
    store = Store(db_pool)
    await store.apply([WriteSet(did=DID, create_account=True)], None)
    await store.apply(
        [
            WriteSet(
                did=DID,
                seq=9,
                status=StatusUpdate(active=False, status="takendown"),
                rejections=[Rejection("commit", "bad_signature", "rev x")],
                resync_reason="missed_commit",
            )
        ],
        None,
    )
    acct = await store.account(DID)
    assert acct is not None and (acct.active, acct.status) == (False, "takendown")
    assert await db_pool.fetchval("SELECT reason FROM rejections WHERE did = $1 AND seq = 9", DID) == "bad_signature"
    assert await db_pool.fetchval("SELECT reason FROM resync_queue WHERE did = $1", DID) == "missed_commit"


async def test_a_failed_write_saves_no_cursor(db_pool: asyncpg.Pool) -> None:
    store = Store(db_pool)
    bad = WriteSet(did=DID, create_account=True, upserts=[binding("3kaaaaaaaaa22", status="nonsense")])
    try:
        await store.apply([bad], CursorUpdate("u", 99, None))
    except asyncpg.CheckViolationError:
        pass
    else:
        raise AssertionError("the CHECK constraint should have refused the status")
    assert await store.load_cursor("u") is None
    assert await store.tracked_dids() == set()


async def test_did_cache_round_trip(db_pool: asyncpg.Pool) -> None:
    store = Store(db_pool)
    t = datetime(2026, 5, 1, tzinfo=UTC)
    await store.save_did(DID, {"id": DID}, None, t)
    cached = await store.load_did(DID)
    assert cached is not None and cached.doc == {"id": DID} and cached.fetched_at == t
    await store.save_did(DID, None, "not_found", t)
    cached = await store.load_did(DID)
    assert cached is not None and cached.doc is None and cached.error == "not_found"
    assert await store.load_did("did:plc:unknown") is None


async def test_same_record_again_keeps_its_xmtp_outcome(db_pool: asyncpg.Pool) -> None:
    store = Store(db_pool)
    await store.apply([WriteSet(did=DID, create_account=True, upserts=[binding("3kaaaaaaaaa22")])], None)
    due = await db_pool.fetchval("SELECT xmtp_next_check FROM bindings")
    assert due is not None  # a new pending binding is due for its XMTP check at once
    await db_pool.execute("UPDATE bindings SET status='verified', verified_at=now(), xmtp_env='dev'")
    await store.apply([WriteSet(did=DID, upserts=[binding("3kbbbbbbbbb22")])], None)  # same cid, newer rev
    row = await db_pool.fetchrow("SELECT status, rev, xmtp_env FROM bindings")
    assert (row["status"], row["rev"], row["xmtp_env"]) == ("verified", "3kbbbbbbbbb22", "dev")


async def test_a_batch_applies_like_its_events_one_by_one(db_pool: asyncpg.Pool) -> None:
    """Grouping by statement kind must not change the outcome: create, delete, create again in one batch."""
    store = Store(db_pool)
    batch = [
        WriteSet(did=DID, seq=1, create_account=True, upserts=[binding("3kaaaaaaaaa22", cid="bafyone")]),
        WriteSet(did=DID, seq=2, status=StatusUpdate(active=False, status="deactivated")),
        WriteSet(did=DID, seq=3, deletes=[("xmtp", "3kbbbbbbbbb22")], repo_state=("3kbbbbbbbbb22", "bafyd2")),
        WriteSet(did=DID, seq=4, status=StatusUpdate(active=True, status=None)),
        WriteSet(
            did=DID, seq=5, upserts=[binding("3kccccccccc22", cid="bafythree")], repo_state=("3kccccccccc22", "d3")
        ),
        WriteSet(did=DID, seq=6, rejections=[Rejection("record", "bad_rkey", "org.xmtp.inbox/x\x00")]),
    ]
    await store.apply(batch, CursorUpdate("u", 6, None), {DID: "3kddddddddd22"})
    row = await db_pool.fetchrow("SELECT cid, rev FROM bindings WHERE did = $1", DID)
    assert (row["cid"], row["rev"]) == ("bafythree", "3kccccccccc22")
    acct = await db_pool.fetchrow("SELECT active, status, rev, data_cid, seen_rev FROM accounts WHERE did = $1", DID)
    assert tuple(acct) == (True, None, "3kccccccccc22", "d3", "3kddddddddd22")
    assert await db_pool.fetchval("SELECT detail FROM rejections WHERE did = $1", DID) == "org.xmtp.inbox/x\ufffd"
    # and a delete after the create in one batch removes it
    await store.apply(
        [
            WriteSet(did=DID, seq=7, upserts=[binding("3keeeeeeeee22", cid="bafyfour")]),
            WriteSet(did=DID, seq=8, deletes=[("xmtp", "3kfffffffff22")]),
        ],
        None,
    )
    assert await db_pool.fetchval("SELECT count(*) FROM bindings WHERE did = $1", DID) == 0


async def test_a_live_batch_never_undoes_a_newer_stored_proof(db_pool: asyncpg.Pool) -> None:
    """A backfill proved the record absent at a later rev; an older live create must not bring it back."""
    store = Store(db_pool)
    await store.apply([WriteSet(did=DID, create_account=True, upserts=[binding("3kaaaaaaaaa22")])], None)
    await db_pool.execute("DELETE FROM bindings WHERE did = $1", DID)  # the backfill's proof of absence...
    await db_pool.execute("UPDATE accounts SET rev = '3kccccccccc22' WHERE did = $1", DID)  # ...at its rev
    newer = await store.apply(
        [WriteSet(did=DID, upserts=[binding("3kbbbbbbbbb22")], repo_state=("3kbbbbbbbbb22", "bafyd"))], None
    )
    assert await db_pool.fetchval("SELECT count(*) FROM bindings WHERE did = $1", DID) == 0
    assert newer == {DID: "3kccccccccc22"}  # so the pipeline catches up in memory
    assert await db_pool.fetchval("SELECT rev FROM accounts WHERE did = $1", DID) == "3kccccccccc22"


async def test_a_write_set_the_database_refuses_is_isolated(db_pool: asyncpg.Pool) -> None:
    store = Store(db_pool)
    good = WriteSet(did=DID, seq=1, create_account=True, upserts=[binding("3kaaaaaaaaa22")])
    other = "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb"
    poison = dataclasses.replace(binding("3kaaaaaaaaa22"), record={"x": "\x00"})  # jsonb cannot hold U+0000
    bad = WriteSet(did=other, seq=2, create_account=True, upserts=[poison])
    try:
        await store.apply([good, bad], CursorUpdate("u", 2, None))
    except asyncpg.PostgresError:
        pass
    else:
        raise AssertionError("PostgreSQL accepted U+0000 in jsonb")
    assert await store.load_cursor("u") is None  # nothing of the failed batch stayed
    newer, failed = await store.apply_isolated([good, bad], CursorUpdate("u", 2, None))
    assert [ws.did for ws, _ in failed] == [other] and newer == {}
    assert await db_pool.fetchval("SELECT count(*) FROM bindings WHERE did = $1", DID) == 1
    assert await db_pool.fetchval("SELECT reason FROM rejections WHERE did = $1", other) == "store_error"
    assert await db_pool.fetchval("SELECT reason FROM resync_queue WHERE did = $1", other) == "store_error"
    assert await store.load_cursor("u") == 2
