"""atmx.indexer.store.queries against a real PostgreSQL (tests/pg_fixtures.py), seeded by tests/seed.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from seed import INBOX_A, INBOX_B, SIGNATURE, VERIFIED_AT, seed_account, seed_didcomm, seed_xmtp

from atmx.indexer.store import queries


async def test_identity_by_did_groups_bindings(db_pool: asyncpg.Pool) -> None:
    await seed_account(db_pool, "did:plc:alice", handle="alice.test")
    await seed_xmtp(db_pool, "did:plc:alice")
    await seed_didcomm(db_pool, "did:plc:alice")
    await seed_account(db_pool, "did:plc:bob", handle="bob.test")
    await seed_xmtp(db_pool, "did:plc:bob", inbox=INBOX_B)

    found = await queries.get_identities(db_pool, ["did:plc:alice", "did:plc:bob"], [])
    assert [i.did for i in found] == ["did:plc:alice", "did:plc:bob"]
    alice = found[0]
    assert alice.handle == "alice.test" and alice.account_status is None
    assert [b.protocol for b in alice.bindings] == ["didcomm", "xmtp"]
    xmtp = alice.bindings[1]
    assert xmtp.xmtp_inbox_id == INBOX_A and xmtp.record["verificationSignature"] == SIGNATURE
    assert xmtp.verified_at == VERIFIED_AT and xmtp.indexed_at.tzinfo is not None
    assert [b.protocol for b in found[1].bindings] == ["xmtp"]


async def test_identity_by_handle_is_case_insensitive_and_needs_verification(db_pool: asyncpg.Pool) -> None:
    await seed_account(db_pool, "did:plc:alice", handle="Alice.Test")
    await seed_xmtp(db_pool, "did:plc:alice")
    await seed_account(db_pool, "did:plc:mallory", handle="bob.test", handle_verified=False)
    await seed_xmtp(db_pool, "did:plc:mallory")

    found = await queries.get_identities(db_pool, [], ["alice.test", "bob.test"])
    assert [(i.did, i.handle, i.handle_lower) for i in found] == [("did:plc:alice", "Alice.Test", "alice.test")]
    # Found by DID, an account with an unverified handle shows no handle.
    (mallory,) = await queries.get_identities(db_pool, ["did:plc:mallory"], [])
    assert mallory.handle is None and mallory.handle_lower is None
    assert mallory.bindings[0].handle is None


async def test_account_without_bindings_is_not_an_identity(db_pool: asyncpg.Pool) -> None:
    await seed_account(db_pool, "did:plc:empty", handle="empty.test")
    assert await queries.get_identities(db_pool, ["did:plc:empty"], ["empty.test"]) == []


@pytest.mark.parametrize("status", queries.HIDDEN_STATUSES)
async def test_hidden_accounts_are_invisible_everywhere(db_pool: asyncpg.Pool, status: str) -> None:
    await seed_account(db_pool, "did:plc:gone", handle="gone.test", status=status)
    await seed_xmtp(db_pool, "did:plc:gone")
    await seed_didcomm(db_pool, "did:plc:gone")
    assert await queries.get_identities(db_pool, ["did:plc:gone"], ["gone.test"]) == []
    assert await queries.resolve_xmtp_inboxes(db_pool, [INBOX_A], include_unverified=True) == {}
    for protocol in ("xmtp", "didcomm"):
        assert await queries.list_bindings(db_pool, protocol, after_did=None, limit=10) == []


@pytest.mark.parametrize("status", [None, "active", "desynchronized", "throttled"])
async def test_other_statuses_stay_visible(db_pool: asyncpg.Pool, status: str | None) -> None:
    await seed_account(db_pool, "did:plc:here", status=status)
    await seed_xmtp(db_pool, "did:plc:here")
    (identity,) = await queries.get_identities(db_pool, ["did:plc:here"], [])
    assert identity.account_status == status
    assert list(await queries.resolve_xmtp_inboxes(db_pool, [INBOX_A], include_unverified=False)) == [INBOX_A]
    assert len(await queries.list_bindings(db_pool, "xmtp", after_did=None, limit=10)) == 1


async def test_resolve_inboxes_filters_unverified_unless_asked(db_pool: asyncpg.Pool) -> None:
    for did, status in [("did:plc:c", "verified"), ("did:plc:a", "verified"), ("did:plc:b", "invalid")]:
        await seed_account(db_pool, did)
        await seed_xmtp(db_pool, did, status=status, reason="bad_signature" if status == "invalid" else None)
    await seed_account(db_pool, "did:plc:d")
    await seed_xmtp(db_pool, "did:plc:d", inbox=INBOX_B, status="pending")

    verified = await queries.resolve_xmtp_inboxes(db_pool, [INBOX_A, INBOX_B], include_unverified=False)
    assert {k: [b.did for b in v] for k, v in verified.items()} == {INBOX_A: ["did:plc:a", "did:plc:c"]}
    everything = await queries.resolve_xmtp_inboxes(db_pool, [INBOX_A, INBOX_B], include_unverified=True)
    assert {k: [(b.did, b.status) for b in v] for k, v in everything.items()} == {
        INBOX_A: [("did:plc:a", "verified"), ("did:plc:b", "invalid"), ("did:plc:c", "verified")],
        INBOX_B: [("did:plc:d", "pending")],
    }
    assert everything[INBOX_A][1].reason == "bad_signature"
    assert await queries.resolve_xmtp_inboxes(db_pool, ["f" * 64], include_unverified=True) == {}


async def test_list_bindings_is_keyset_paginated_by_did(db_pool: asyncpg.Pool) -> None:
    dids = [f"did:plc:{n:03d}" for n in range(7)]
    for did in reversed(dids):
        await seed_account(db_pool, did)
        await seed_xmtp(db_pool, did, status="invalid" if did.endswith("3") else "verified")
    await seed_didcomm(db_pool, dids[2])

    page1 = await queries.list_bindings(db_pool, "xmtp", after_did=None, limit=3)
    assert [b.did for b in page1] == dids[:3]
    page2 = await queries.list_bindings(db_pool, "xmtp", after_did=page1[-1].did, limit=10)
    assert [b.did for b in page2] == dids[3:]
    assert page2[0].status == "invalid"
    assert [b.did for b in await queries.list_bindings(db_pool, "didcomm", after_did=None, limit=10)] == [dids[2]]
    invalid = await queries.list_bindings(db_pool, "xmtp", after_did=None, limit=10, status="invalid")
    assert [b.did for b in invalid] == [dids[3]]
    assert await queries.list_bindings(db_pool, "didcomm", after_did=None, limit=10, status="invalid") == []


async def test_counts_keep_hidden_accounts_apart(db_pool: asyncpg.Pool) -> None:
    await seed_account(db_pool, "did:plc:a")
    await seed_xmtp(db_pool, "did:plc:a")
    await seed_didcomm(db_pool, "did:plc:a")
    await seed_account(db_pool, "did:plc:gone", status="takendown")
    await seed_xmtp(db_pool, "did:plc:gone", status="pending")
    counts = await queries.get_index_counts(db_pool)
    assert (counts.accounts, counts.hidden_accounts, counts.hidden_bindings) == (1, 1, 1)
    assert counts.bindings == {("xmtp", "verified"): 1, ("didcomm", "valid"): 1}
    assert counts.by_protocol() == [
        ("xmtp", [("verified", 1), ("pending", 0), ("unverifiable", 0), ("invalid", 0)]),
        ("didcomm", [("valid", 1), ("invalid", 0)]),
    ]


async def test_health_without_an_indexer_report_is_disconnected_with_the_cursor_age(db_pool: asyncpg.Pool) -> None:
    assert await queries.get_health(db_pool) == queries.Health(cursor=None, lag_seconds=None, state="disconnected")
    now = datetime.now(UTC)
    await db_pool.execute(
        "INSERT INTO cursors (upstream, seq, event_time) VALUES ('wss://a', 10, $1), ('wss://b', 42, $2)",
        now - timedelta(hours=1),
        now - timedelta(seconds=30),
    )
    health = await queries.get_health(db_pool)
    assert health.cursor == 42
    assert health.lag_seconds is not None and 29 < health.lag_seconds < 60
    assert health.state == "disconnected"
    await db_pool.execute("UPDATE cursors SET event_time = NULL")
    assert (await queries.get_health(db_pool)).lag_seconds is None


async def test_health_follows_the_indexer_report(db_pool: asyncpg.Pool) -> None:
    """A fresh report gives the indexer's state and lag; an idle one keeps lag 0 however old the
    last event; a report older than STALE_AFTER means no indexer reports: disconnected."""
    await db_pool.execute(
        "INSERT INTO cursors (upstream, seq, event_time) VALUES ('wss://a', 10, now() - interval '1 hour'),"
        " ('wss://b', 42, now() - interval '10 minutes')"
    )
    await db_pool.execute(
        "INSERT INTO firehose_status (upstream, state, connected, lag_seconds, received_at, reported_at)"
        " VALUES ('wss://a', 'idle', true, 0.2, now() - interval '1 hour', now() - interval '1 second')"
    )
    health = await queries.get_health(db_pool)
    assert (health.cursor, health.state, health.lag_seconds) == (10, "idle", 0.2)  # the reporting upstream's
    assert health.idle_seconds is not None and 3590 < health.idle_seconds < 3700
    await db_pool.execute("UPDATE firehose_status SET reported_at = now() - interval '1 minute'")
    stale = await queries.get_health(db_pool)
    assert stale.state == "disconnected"
    assert stale.lag_seconds is not None and stale.lag_seconds > 3590


@pytest.mark.parametrize(
    ("sql", "args", "index"),
    [
        (queries._IDENTITIES_SQL, (["did:plc:x"], []), "accounts_pkey"),
        (queries._IDENTITIES_SQL, ([], ["x.test"]), "accounts_handle_idx"),
        (queries._INBOXES_SQL, ([INBOX_A], False), "bindings_inbox_idx"),
        (queries._LIST_SQL, ("xmtp", "", 100, None), "bindings_protocol_idx"),
        (queries._LIST_SQL, ("xmtp", "", 100, "verified"), "bindings_protocol_idx"),
    ],
)
async def test_queries_can_use_their_indexes(
    db_pool: asyncpg.Pool, sql: str, args: tuple[Any, ...], index: str
) -> None:
    async with db_pool.acquire() as conn, conn.transaction():
        # Tiny tables make sequential scans cheapest; forbid them to see which index the plan picks.
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(row[0] for row in await conn.fetch("EXPLAIN " + sql, *args))
    assert index in plan, plan


async def test_records_round_trip_as_json(db_pool: asyncpg.Pool) -> None:
    # A malformed record (invalid binding) must come back unchanged, whatever its shape.
    await seed_account(db_pool, "did:plc:odd")
    await seed_xmtp(db_pool, "did:plc:odd", inbox=None, status="invalid", record=["not", "an", "object"])
    (identity,) = await queries.get_identities(db_pool, ["did:plc:odd"], [])
    assert json.dumps(identity.bindings[0].record) == '["not", "an", "object"]'
