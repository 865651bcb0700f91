from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime

import asyncpg

from atmx.indexer.index.decide import RepoState
from atmx.indexer.index.writes import (
    BindingRow,
    CursorUpdate,
    IdentityUpdate,
    RecordDelete,
    Rejection,
    StatusUpdate,
    WriteSet,
)
from atmx.indexer.store.apply import CHANGE_LOCK
from atmx.indexer.store.index_store import Store

DID = "did:plc:abcdefghijklmnopqrstuvwx"
DELETE_A, DELETE_B, DELETE_C, DELETE_F = (RecordDelete("org.xmtp.inbox", "self", f"3k{c * 9}22") for c in "abcf")


def binding(rev: str, cid: str = "bafyone", status: str = "pending") -> BindingRow:
    return BindingRow(
        did=DID,
        collection="org.xmtp.inbox",
        rkey="self",
        protocol="xmtp",
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
    assert await store.repo_state(DID) == RepoState("3kaaaaaaaaa22", "bafydata")
    row = await db_pool.fetchrow("SELECT * FROM bindings WHERE did = $1", DID)
    assert row["status"] == "pending" and row["record"]["id"] == "ab" * 32


async def test_older_rev_changes_nothing(db_pool: asyncpg.Pool) -> None:
    store = Store(db_pool)
    await store.apply([WriteSet(did=DID, create_account=True, upserts=[binding("3kbbbbbbbbb22", cid="bafynew")])], None)
    await store.apply([WriteSet(did=DID, upserts=[binding("3kaaaaaaaaa22", cid="bafyold")])], None)
    await store.apply([WriteSet(did=DID, deletes=[DELETE_A])], None)
    assert await db_pool.fetchval("SELECT cid FROM bindings WHERE did = $1", DID) == "bafynew"
    await store.apply([WriteSet(did=DID, deletes=[DELETE_C])], None)
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
    # The same rejection again counts on its row instead of adding one: a flood stays one row.
    for seq in (10, 11):
        again = WriteSet(did=DID, seq=seq, rejections=[Rejection("commit", "bad_signature", "rev x")])
        await store.apply([again], None)
    rows = await db_pool.fetch("SELECT seq, count FROM rejections WHERE did = $1", DID)
    assert [(r["seq"], r["count"]) for r in rows] == [(11, 3)]


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
    assert await db_pool.fetchval("SELECT count(*) FROM changes") == 0  # no change announced either


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
        WriteSet(did=DID, seq=3, deletes=[DELETE_B], repo_state=("3kbbbbbbbbb22", "bafyd2")),
        WriteSet(did=DID, seq=4, status=StatusUpdate(active=True, status=None)),
        WriteSet(
            did=DID, seq=5, upserts=[binding("3kccccccccc22", cid="bafythree")], repo_state=("3kccccccccc22", "d3")
        ),
        WriteSet(did=DID, seq=6, rejections=[Rejection("record", "bad_rkey", "org.xmtp.inbox/x\x00")]),
    ]
    await store.apply(batch, CursorUpdate("u", 6, None))
    row = await db_pool.fetchrow("SELECT cid, rev FROM bindings WHERE did = $1", DID)
    assert (row["cid"], row["rev"]) == ("bafythree", "3kccccccccc22")
    acct = await db_pool.fetchrow("SELECT active, status, rev, data_cid FROM accounts WHERE did = $1", DID)
    assert tuple(acct) == (True, None, "3kccccccccc22", "d3")
    # every change is in the log, in order, and every binding version in the history
    kinds = [(r["kind"], r["body"].get("action")) for r in await db_pool.fetch("SELECT * FROM changes ORDER BY seq")]
    assert kinds == [
        ("binding", "create"),
        ("account", None),
        ("binding", "delete"),
        ("account", None),
        ("binding", "create"),
    ]
    history = await db_pool.fetch("SELECT action, cid FROM binding_history WHERE did = $1 ORDER BY id", DID)
    assert [(h["action"], h["cid"]) for h in history] == [
        ("create", "bafyone"),
        ("delete", None),
        ("create", "bafythree"),
    ]
    assert await db_pool.fetchval("SELECT detail FROM rejections WHERE did = $1", DID) == "org.xmtp.inbox/x\ufffd"
    # and a delete after the create in one batch removes it
    await store.apply(
        [
            WriteSet(did=DID, seq=7, upserts=[binding("3keeeeeeeee22", cid="bafyfour")]),
            WriteSet(did=DID, seq=8, deletes=[DELETE_F]),
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
    logged = await db_pool.fetchval("SELECT count(*) FROM changes")
    newer = await store.apply(
        [WriteSet(did=DID, upserts=[binding("3kbbbbbbbbb22")], repo_state=("3kbbbbbbbbb22", "bafyd"))], None
    )
    assert await db_pool.fetchval("SELECT count(*) FROM bindings WHERE did = $1", DID) == 0
    assert newer == {DID: "3kccccccccc22"}  # so the pipeline catches up in memory
    assert await db_pool.fetchval("SELECT rev FROM accounts WHERE did = $1", DID) == "3kccccccccc22"
    assert await db_pool.fetchval("SELECT count(*) FROM changes") == logged  # nothing applied, nothing announced


async def test_a_write_set_the_database_refuses_is_isolated(db_pool: asyncpg.Pool) -> None:
    store = Store(db_pool)
    good = WriteSet(did=DID, seq=1, create_account=True, upserts=[binding("3kaaaaaaaaa22")])
    other = "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb"
    poison = dataclasses.replace(binding("3kaaaaaaaaa22"), did=other, record={"x": "\x00"})  # jsonb refuses U+0000
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


async def test_a_verified_handle_is_cleared_for_every_other_account(db_pool: asyncpg.Pool) -> None:
    store = Store(db_pool)
    other = "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb"
    await store.apply(
        [WriteSet(did=other, create_account=True, identity=IdentityUpdate("alice.test", True, None))], None
    )
    await store.apply([WriteSet(did=DID, create_account=True, identity=IdentityUpdate("Alice.Test", True, None))], None)
    rows = {r["did"]: r["handle_verified"] for r in await db_pool.fetch("SELECT did, handle_verified FROM accounts")}
    assert rows == {DID: True, other: False}  # the domain changed hands: only the new owner holds it
    handles = [r["body"] for r in await db_pool.fetch("SELECT body FROM changes WHERE kind = 'handle' ORDER BY seq")]
    assert handles[-1] == {"did": other, "handle": "handle.invalid"}


async def test_change_seqs_follow_commit_order_across_writers(db_pool: asyncpg.Pool) -> None:
    """A transaction that draws a seq holds the log's lock until it commits: a reader that has seen
    seq N never finds a seq below N appearing later."""
    store = Store(db_pool)
    await store.apply([WriteSet(did=DID, create_account=True, upserts=[binding("3kaaaaaaaaa22")])], None)
    async with db_pool.acquire() as slow, slow.transaction():
        await slow.execute("SELECT pg_advisory_xact_lock($1)", CHANGE_LOCK)  # a writer mid-append
        fast = asyncio.create_task(store.apply([WriteSet(did=DID, upserts=[binding("3kbbbbbbbbb22", "bafyb")])], None))
        await asyncio.sleep(0.3)
        assert not fast.done(), "the second writer waits for the first to commit before drawing a seq"
    await fast
    seqs = [r["seq"] for r in await db_pool.fetch("SELECT seq FROM changes ORDER BY seq")]
    assert seqs == sorted(seqs) and len(seqs) == 2
