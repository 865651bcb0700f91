"""atmx.indexer.store.queries against a real PostgreSQL (tests/pg_fixtures.py), seeded by tests/seed.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from seed import (
    DEVICE_KEY,
    GERM_KEY,
    INBOX_A,
    INBOX_B,
    SIGNATURE,
    VERIFIED_AT,
    device_record,
    seed_account,
    seed_binding,
    seed_catbird,
    seed_did_doc,
    seed_didcomm,
    seed_germ,
    seed_xmtp,
)

from atmx.api.devices import AUTHORIZING_COLLECTIONS
from atmx.indexer.records.keys import lookup_form
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
    await seed_germ(db_pool, "did:plc:gone")
    await seed_catbird(db_pool, "did:plc:gone")
    for protocol in ("xmtp", "didcomm", "germ", "catbird"):
        assert await queries.list_bindings(db_pool, protocol, after_did=None, limit=10) == []
    assert await queries.find_mls_device(db_pool, "did:plc:gone", DEVICE_KEY, AUTHORIZING_COLLECTIONS) is None
    counts = await queries.get_index_counts(db_pool)
    assert (counts.accounts, counts.bindings) == (0, {})  # what the API serves: nothing of it
    assert (counts.hidden_accounts, counts.hidden_bindings) == (1, 5)  # counted apart, for operators


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
        (queries._INBOXES_SQL, ([INBOX_A], False, None), "bindings_inbox_idx"),
        (queries._LIST_SQL, ("xmtp", "", 100, None), "bindings_protocol_idx"),
        (queries._LIST_SQL, ("xmtp", "", 100, "verified"), "bindings_protocol_idx"),
        (queries._LIST_MANY_SQL, ("catbird", "", None, 100, None), "bindings_protocol_idx"),
        (queries._MLS_DEVICE_SQL, ("did:plc:x", b"k", ["blue.catbird.chat.device"]), "bindings_key_idx"),
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


# --- Germ and Catbird ---------------------------------------------------------------------------


async def test_identity_holds_every_family_in_protocol_then_collection_order(db_pool: asyncpg.Pool) -> None:
    await seed_account(db_pool, "did:plc:all")
    await seed_xmtp(db_pool, "did:plc:all")
    await seed_germ(db_pool, "did:plc:all")
    await seed_catbird(db_pool, "did:plc:all", devices={"b": DEVICE_KEY, "a": GERM_KEY})
    (identity,) = await queries.get_identities(db_pool, ["did:plc:all"], [])
    assert [(b.protocol, b.collection, b.rkey) for b in identity.bindings] == [
        ("catbird", "blue.catbird.chat.declaration", "self"),
        ("catbird", "blue.catbird.chat.device", "a"),
        ("catbird", "blue.catbird.chat.device", "b"),
        ("germ", "com.germnetwork.declaration", "self"),
        ("xmtp", "org.xmtp.inbox", "self"),
    ]
    assert identity.mls_endpoint is None  # no DID document cached


MLS = {"id": "#atproto_mls", "type": "AtprotoMLSDeliveryService", "serviceEndpoint": "https://mls.example.com"}


@pytest.mark.parametrize(
    ("services", "endpoint"),
    [
        ([MLS], "https://mls.example.com"),
        ([{**MLS, "id": "did:plc:mls#atproto_mls"}], "https://mls.example.com"),  # absolute id
        ([{"id": "#atproto_pds"}, 7, MLS], "https://mls.example.com"),
        ([{**MLS, "type": "AtprotoPersonalDataServer"}, MLS], None),  # the first entry decides
        ([{**MLS, "serviceEndpoint": "http://mls.example.com"}], None),  # https only
        ([{**MLS, "serviceEndpoint": {"uri": "https://x"}}], None),
        ([{**MLS, "id": "did:plc:other#atproto_mls"}], None),
        ({"not": "a list"}, None),
        ([], None),
    ],
)
async def test_mls_service_comes_from_the_cached_did_document(
    db_pool: asyncpg.Pool, services: Any, endpoint: str | None
) -> None:
    await seed_account(db_pool, "did:plc:mls")
    await seed_catbird(db_pool, "did:plc:mls")
    await seed_did_doc(db_pool, "did:plc:mls", services)
    (identity,) = await queries.get_identities(db_pool, ["did:plc:mls"], [])
    assert identity.mls_endpoint == endpoint


async def test_mls_service_is_read_only_for_catbird_accounts(db_pool: asyncpg.Pool) -> None:
    await seed_account(db_pool, "did:plc:germonly")
    await seed_germ(db_pool, "did:plc:germonly")
    await seed_did_doc(db_pool, "did:plc:germonly", [MLS])
    (identity,) = await queries.get_identities(db_pool, ["did:plc:germonly"], [])
    assert identity.mls_endpoint is None


async def test_listing_pages_inside_an_account_with_many_records(db_pool: asyncpg.Pool) -> None:
    for did in ("did:plc:a", "did:plc:b"):
        await seed_account(db_pool, did)
        await seed_catbird(db_pool, did, devices={f"d{i}": bytes([i]) * 32 for i in range(3)})
    seen: list[str] = []
    after: tuple[str | None, str | None] = (None, None)
    while True:
        page = await queries.list_bindings(db_pool, "catbird", after_did=after[0], after_uri=after[1], limit=3)
        seen += [b.uri for b in page]
        if len(page) < 3:
            break
        after = (page[-1].did, page[-1].uri)
    assert len(seen) == len(set(seen)) == 8  # 2 declarations + 6 devices, none skipped or repeated
    assert seen == sorted(seen, key=lambda uri: (uri.split("/")[2], uri))
    # a cursor of a DID alone still means: after every binding of that DID
    rest = await queries.list_bindings(db_pool, "catbird", after_did="did:plc:a", limit=10)
    assert {b.did for b in rest} == {"did:plc:b"} and len(rest) == 4


async def test_find_mls_device(db_pool: asyncpg.Pool) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    compressed = p256.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    uncompressed = p256.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    await seed_account(db_pool, "did:plc:dev")
    await seed_catbird(db_pool, "did:plc:dev", devices={"phone": DEVICE_KEY})
    p256_record = device_record(uncompressed, algorithm="p256")
    await seed_binding(
        db_pool, "did:plc:dev", "catbird", "blue.catbird.chat.device", "laptop", p256_record, key=compressed
    )
    bad = device_record(GERM_KEY, algorithm="secp256k1")
    await seed_binding(
        db_pool, "did:plc:dev", "catbird", "blue.catbird.chat.device", "bad", bad, status="invalid", key=GERM_KEY
    )
    legacy = device_record(GERM_KEY, legacy=True)
    await seed_binding(db_pool, "did:plc:dev", "catbird", "blue.catbird.mlsChat.device", "old", legacy, key=GERM_KEY)

    async def find(key: bytes, did: str = "did:plc:dev") -> str | None:
        found = await queries.find_mls_device(db_pool, did, lookup_form(key), AUTHORIZING_COLLECTIONS)
        return found.rkey if found is not None else None

    assert await find(DEVICE_KEY) == "phone"
    assert await find(uncompressed) == await find(compressed) == "laptop"  # either SEC1 form
    assert await find(GERM_KEY) is None  # only in an invalid record and a legacy one
    assert await find(bytes(32)) is None
    assert await find(DEVICE_KEY, did="did:plc:someoneelse") is None
    await db_pool.execute("DELETE FROM bindings WHERE rkey = 'phone'")
    assert await find(DEVICE_KEY) is None


async def test_counts_include_every_protocol(db_pool: asyncpg.Pool) -> None:
    await seed_account(db_pool, "did:plc:c")
    await seed_germ(db_pool, "did:plc:c", status="invalid", reason="bad_key_point")
    await seed_catbird(db_pool, "did:plc:c", devices={"x": DEVICE_KEY, "y": GERM_KEY})
    counts = await queries.get_index_counts(db_pool)
    assert counts == queries.IndexCounts(accounts=1, bindings={("catbird", "valid"): 3, ("germ", "invalid"): 1})
