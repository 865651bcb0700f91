"""indexer/store/xmtp_store.py: the XMTP stage's bindings due, verdicts and stored inbox logs, on a
real PostgreSQL. (The stage that drives it is test_verifier.py's.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from atmx.indexer.index.writes import BindingRow, WriteSet
from atmx.indexer.store.apply import apply_writes
from atmx.indexer.store.xmtp_store import InboxLog, XmtpOutcome, XmtpStore

DID = "did:plc:" + "x" * 24
INBOX = "ab" * 32
SIGNATURE = "c2ln" * 22


async def bind(pool: asyncpg.Pool, cid: str = "bafyone", rev: str = "3kb") -> None:
    record = {"id": INBOX, "verificationSignature": SIGNATURE, "createdAt": "2026-11-01T00:00:00Z"}
    row = BindingRow(DID, "org.xmtp.inbox", "self", "xmtp", cid, rev, record, "pending", None, INBOX, None)
    async with pool.acquire() as conn, conn.transaction():
        await apply_writes(conn, [WriteSet(did=DID, create_account=True, upserts=[row])], datetime.now(UTC))


def later(minutes: float = 1) -> datetime:
    return datetime.now(UTC) + timedelta(minutes=minutes)


def outcome(status: str, reason: str | None = None, cid: str = "bafyone") -> XmtpOutcome:
    now = datetime.now(UTC)
    return XmtpOutcome(DID, cid, status, reason, "production", "ee" * 32, now, now + timedelta(hours=1), 0)


async def test_a_new_binding_is_due_at_once(db_pool: asyncpg.Pool) -> None:
    store = XmtpStore(db_pool)
    await bind(db_pool)
    [due] = await store.due_xmtp_bindings(later(), 10)
    assert (due.did, due.inbox_id, due.signature, due.status, due.attempts) == (DID, INBOX, SIGNATURE, "pending", 0)
    assert await store.xmtp_queue_size(later()) == 1


async def test_a_verdict_is_stored_and_announced_once(db_pool: asyncpg.Pool) -> None:
    store = XmtpStore(db_pool)
    await bind(db_pool)
    assert await store.set_xmtp_outcome(outcome("verified")) is True
    assert await store.set_xmtp_outcome(outcome("verified")) is False  # the same verdict again: no news
    row = await db_pool.fetchrow("SELECT status, xmtp_env, verified_at FROM bindings WHERE did = $1", DID)
    assert (row["status"], row["xmtp_env"]) == ("verified", "production") and row["verified_at"] is not None
    assert await store.xmtp_queue_size(later()) == 0  # next check in an hour
    assert [r["action"] for r in await db_pool.fetch("SELECT action FROM binding_history ORDER BY id")][-1] == "verdict"
    kinds = [r["body"]["action"] for r in await db_pool.fetch("SELECT body FROM changes ORDER BY seq")]
    assert kinds == ["create", "verdict"]


async def test_a_verdict_for_a_replaced_record_is_dropped(db_pool: asyncpg.Pool) -> None:
    store = XmtpStore(db_pool)
    await bind(db_pool, cid="bafytwo")
    assert await store.set_xmtp_outcome(outcome("invalid", "inbox_not_found", cid="bafyone")) is False
    assert await db_pool.fetchval("SELECT status FROM bindings WHERE did = $1", DID) == "pending"


async def test_inbox_logs_grow_by_appending(db_pool: asyncpg.Pool) -> None:
    store = XmtpStore(db_pool)
    assert await store.load_inbox_log(INBOX, "production") == InboxLog(0, [], [])
    log = await store.append_inbox_log(INBOX, "production", [(1, b"a"), (3, b"b")], had_updates=True)
    assert (log.last_sequence_id, log.updates, log.sequence_ids) == (3, [b"a", b"b"], [1, 3])
    grown = await store.append_inbox_log(INBOX, "production", [(4, b"c")], had_updates=True)
    assert grown.sequence_ids == [1, 3, 4]
    # a concurrent append got there first: nothing is appended, the stored log comes back
    assert (await store.append_inbox_log(INBOX, "production", [(2, b"x")], had_updates=True)).sequence_ids == [1, 3, 4]
    assert (await store.load_inbox_log(INBOX, "dev")).sequence_ids == []  # one log per environment
    with pytest.raises(ValueError, match="strictly increase"):
        await store.append_inbox_log(INBOX, "production", [(6, b"x"), (5, b"y")], had_updates=True)
    with pytest.raises(ValueError, match="no inbox log entries"):
        await store.append_inbox_log(INBOX, "production", [], had_updates=True)


async def test_a_log_with_news_makes_the_inboxs_bindings_due(db_pool: asyncpg.Pool) -> None:
    store = XmtpStore(db_pool)
    await bind(db_pool)
    await store.set_xmtp_outcome(outcome("verified"))
    await store.append_inbox_log(INBOX, "production", [(1, b"a")], had_updates=True)
    assert await store.xmtp_queue_size(later()) == 1


async def test_replacing_a_log_is_guarded_by_what_was_read(db_pool: asyncpg.Pool) -> None:
    store = XmtpStore(db_pool)
    now = datetime.now(UTC)
    await store.append_inbox_log(INBOX, "production", [(1, b"a"), (2, b"b")], had_updates=False)
    entries = [(1, b"a"), (2, b"b"), (5, b"e")]
    assert not await store.replace_inbox_log(
        INBOX, "production", entries, read_at=now, expected_last=1, had_updates=False
    )
    assert await store.replace_inbox_log(INBOX, "production", entries, read_at=now, expected_last=2, had_updates=False)
    log = await store.load_inbox_log(INBOX, "production")
    assert log.sequence_ids == [1, 2, 5] and log.read_at == now
    fewer = [(5, b"e")]  # would drop stored entries: refused
    assert not await store.replace_inbox_log(
        INBOX, "production", fewer, read_at=now, expected_last=5, had_updates=False
    )
    await store.discard_inbox_log(INBOX, "production")
    assert await store.load_inbox_log(INBOX, "production") == InboxLog(0, [], [])


async def test_recheck_on_request_by_did_or_inbox(db_pool: asyncpg.Pool) -> None:
    store = XmtpStore(db_pool)
    await bind(db_pool)
    await store.set_xmtp_outcome(outcome("verified"))
    assert await store.request_xmtp_recheck(INBOX) == 1
    assert await store.request_xmtp_recheck(DID) == 1
    assert await store.request_xmtp_recheck("did:plc:nobody") == 0
    assert await store.xmtp_queue_size(later()) == 1
