"""atmx.api.handlers called directly (no HTTP): parameter rules and response views."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from lexicon_validator import validate_output
from multidict import MultiDict
from seed import (
    DEVICE_KEY,
    GERM_KEY,
    INBOX_A,
    device_record,
    seed_account,
    seed_binding,
    seed_catbird,
    seed_didcomm,
    seed_germ,
    seed_xmtp,
)

from atmx.api import devices, handlers
from atmx.api.errors import XrpcError
from atmx.indexer.store.queries import Binding

NOW = datetime(2026, 3, 4, 5, 6, 7, 891234, tzinfo=UTC)


BASE = Binding(
    did="did:plc:x",
    handle=None,
    collection="org.xmtp.inbox",
    rkey="self",
    protocol="xmtp",
    uri="at://did:plc:x/org.xmtp.inbox/self",
    cid="bafy",
    rev="3kaaaaaaaaa22",
    record={},
    status="valid",
    reason=None,
    xmtp_inbox_id=None,
    xmtp_env=None,
    xmtp_installation=None,
    created_at=None,
    indexed_at=NOW,
    verified_at=None,
)


COLLECTION = {"xmtp": "org.xmtp.inbox", "didcomm": "at.didcomm.keyPackage"}


def binding(protocol: str = "xmtp", **changes: Any) -> Binding:
    collection = COLLECTION[protocol]
    return replace(BASE, protocol=protocol, collection=collection, uri=f"at://did:plc:x/{collection}/self", **changes)


async def test_get_identities_gives_one_identity_for_a_did_and_its_handle(db_pool: asyncpg.Pool) -> None:
    await seed_account(db_pool, "did:plc:alice", handle="alice.test")
    await seed_xmtp(db_pool, "did:plc:alice")
    params = MultiDict([("actors", "ALICE.test"), ("actors", "did:plc:alice")])
    body = await handlers.get_identities(db_pool, params)
    assert [i["did"] for i in body["identities"]] == ["did:plc:alice"] and body["notFound"] == []


async def test_shared_handle_resolves_to_one_account_stably(db_pool: asyncpg.Pool) -> None:
    # Two accounts briefly both verified for one handle (before the writer clears the stale one).
    for did in ("did:plc:bbb", "did:plc:aaa"):
        await seed_account(db_pool, did, handle="shared.test")
        await seed_didcomm(db_pool, did)
    body = await handlers.get_identity(db_pool, MultiDict(actor="shared.test"))
    assert body["did"] == "did:plc:aaa"


def resolving(answers: dict[str, str | None]) -> handlers.HandleResolver:
    """What DNS and /.well-known say each handle points to now."""
    asked: list[str] = []

    async def resolve(handle: str) -> str | None:
        asked.append(handle)
        return answers.get(handle)

    resolve.asked = asked  # type: ignore[attr-defined]
    return resolve


async def test_a_handle_that_changed_hands_never_answers_with_its_former_owner(db_pool: asyncpg.Pool) -> None:
    # The index still says alice.test is did:plc:old (verified when it was); the domain now points
    # elsewhere and no #identity for did:plc:old ever announced it.
    await seed_account(db_pool, "did:plc:old", handle="alice.test")
    await seed_xmtp(db_pool, "did:plc:old")
    assert (await handlers.get_identity(db_pool, MultiDict(actor="alice.test")))["did"] == "did:plc:old"  # index only
    for now in ("did:plc:new", None):  # moved to an account not indexed, or resolves to nothing at all
        resolve = resolving({"alice.test": now})
        with pytest.raises(XrpcError) as info:
            await handlers.get_identity(db_pool, MultiDict(actor="alice.test"), resolve_handle=resolve)
        assert info.value.name == "IdentityNotFound"
        body = await handlers.get_identities(
            db_pool, MultiDict([("actors", "alice.test"), ("actors", "did:plc:old")]), resolve_handle=resolve
        )
        assert [i["did"] for i in body["identities"]] == ["did:plc:old"] and body["notFound"] == ["alice.test"]


async def test_a_handle_answers_with_the_account_it_resolves_to(db_pool: asyncpg.Pool) -> None:
    # Two accounts verified for one handle (the writer has not cleared the former owner yet):
    # the one the handle resolves to now is the answer, whatever the DID order.
    for did in ("did:plc:aaa", "did:plc:bbb"):
        await seed_account(db_pool, did, handle="shared.test")
        await seed_didcomm(db_pool, did)
    resolve = resolving({"shared.test": "did:plc:bbb"})
    body = await handlers.get_identity(db_pool, MultiDict(actor="SHARED.test"), resolve_handle=resolve)
    assert body["did"] == "did:plc:bbb" and resolve.asked == ["shared.test"]  # type: ignore[attr-defined]
    # a lookup by DID needs no resolution, nor does a handle the index does not hold (a client
    # cannot make atmx fetch from a domain of its choosing)
    await handlers.get_identity(db_pool, MultiDict(actor="did:plc:aaa"), resolve_handle=resolve)
    body = await handlers.get_identities(db_pool, MultiDict(actors="attacker.example.com"), resolve_handle=resolve)
    assert body["notFound"] == ["attacker.example.com"]
    assert resolve.asked == ["shared.test"]  # type: ignore[attr-defined]


async def test_handlers_raise_xrpc_errors(db_pool: asyncpg.Pool) -> None:
    with pytest.raises(XrpcError) as info:
        await handlers.get_identity(db_pool, MultiDict(actor="did:plc:nobody"))
    assert (info.value.status, info.value.name) == (400, "IdentityNotFound")
    with pytest.raises(XrpcError) as info:
        await handlers.resolve_xmtp_inbox(db_pool, MultiDict([("inboxId", INBOX_A), ("inboxId", INBOX_A)]))
    assert info.value.name == "InvalidRequest"


async def test_health_reports_version_and_maps_failures_to_503(db_pool: asyncpg.Pool) -> None:
    assert await handlers.health(lambda: db_pool, "1.0") == (
        200,
        {"version": "1.0", "state": "disconnected", "cursor": None, "lagSeconds": None, "idleSeconds": None},
    )

    async with db_pool.acquire() as conn:
        # Hold a lock the health query needs, so it runs into the 2 s timeout.
        async with conn.transaction():
            await conn.execute("LOCK TABLE cursors IN ACCESS EXCLUSIVE MODE")
            started = datetime.now(UTC)
            status, body = await handlers.health(lambda: db_pool, "1.0")
            elapsed = (datetime.now(UTC) - started).total_seconds()
    assert (status, body) == (503, {"version": "1.0", "error": "DatabaseUnavailable"})
    assert 1.5 < elapsed < 5


async def test_get_index_status_counts_cursor_and_backfill(db_pool: asyncpg.Pool) -> None:
    empty = await handlers.get_index_status(db_pool, MultiDict())
    # no cursor, no lag, no backfill yet; every status each protocol can have, at 0
    assert empty == {
        "accounts": 0,
        "state": "disconnected",
        "bindings": [
            {"protocol": "xmtp", "status": "verified", "count": 0},
            {"protocol": "xmtp", "status": "pending", "count": 0},
            {"protocol": "xmtp", "status": "unverifiable", "count": 0},
            {"protocol": "xmtp", "status": "invalid", "count": 0},
            {"protocol": "didcomm", "status": "valid", "count": 0},
            {"protocol": "didcomm", "status": "invalid", "count": 0},
        ],
    }
    await seed_account(db_pool, "did:plc:a")
    await seed_xmtp(db_pool, "did:plc:a")
    await seed_didcomm(db_pool, "did:plc:a")
    await seed_account(db_pool, "did:plc:b")
    await seed_xmtp(db_pool, "did:plc:b", status="pending")
    await seed_account(db_pool, "did:plc:c", status="suspended")  # hidden: not counted
    await seed_xmtp(db_pool, "did:plc:c")
    await db_pool.execute(
        "INSERT INTO cursors (upstream, seq, event_time) VALUES ('wss://r.test', 77, now() - interval '90 seconds')"
    )
    await db_pool.execute("INSERT INTO backfill_repos (did, source, state) VALUES ('did:plc:a', 'r', 'done')")
    body = await handlers.get_index_status(db_pool, MultiDict())
    validate_output("directory.atmx.getIndexStatus", body)
    assert body["accounts"] == 2
    assert sorted((b["protocol"], b["status"], b["count"]) for b in body["bindings"] if b["count"]) == [
        ("didcomm", "valid", 1),
        ("xmtp", "pending", 1),
        ("xmtp", "verified", 1),
    ]
    assert ("xmtp", "valid") not in {(b["protocol"], b["status"]) for b in body["bindings"]}
    # no indexer reports: disconnected, and the lag is the age of the cursor's event
    assert body["state"] == "disconnected"
    assert body["cursor"] == 77 and 89 <= body["lagSeconds"] <= 120
    assert body["backfill"]["repos"] == 1 and body["backfill"]["done"] == 1


# --- Germ and Catbird ---------------------------------------------------------------------------


async def test_check_mls_device(db_pool: asyncpg.Pool) -> None:
    await seed_account(db_pool, "did:plc:dev")
    await seed_catbird(db_pool, "did:plc:dev", devices={"phone": DEVICE_KEY})
    legacy = device_record(GERM_KEY, legacy=True)
    await seed_binding(db_pool, "did:plc:dev", "catbird", "blue.catbird.mlsChat.device", "old", legacy, key=GERM_KEY)

    async def check(key: str, did: str = "did:plc:dev") -> dict[str, Any]:
        body = await handlers.METHODS["directory.atmx.checkMlsDevice"](db_pool, MultiDict(did=did, key=key))
        validate_output("directory.atmx.checkMlsDevice", body)
        return body

    standard = base64.b64encode(DEVICE_KEY).decode()
    yes = await check(standard)
    assert yes["authorized"] is True and yes["did"] == "did:plc:dev"
    assert yes["device"]["deviceId"] == "phone" and yes["device"]["legacy"] is False
    # the same key unpadded, URL-safe, or with its '+' turned into a space by a careless client
    for form in (standard.rstrip("="), base64.urlsafe_b64encode(DEVICE_KEY).decode(), standard.replace("+", " ")):
        assert (await check(form))["authorized"] is True, form
    assert await check(base64.b64encode(GERM_KEY).decode()) == {"did": "did:plc:dev", "authorized": False}  # legacy
    assert await check(base64.b64encode(bytes(32)).decode()) == {"did": "did:plc:dev", "authorized": False}
    assert (await check(standard, did="did:plc:other"))["authorized"] is False


@pytest.mark.parametrize(
    "params",
    [
        {"key": "AAAA"},
        {"did": "did:plc:dev"},
        {"did": "alice.test", "key": "AAAA"},
        {"did": "did:plc:dev", "key": "A"},
        {"did": "did:plc:dev", "key": "AA*A"},
        {"did": "did:plc:dev", "key": "A" * 200},
        {"did": "did:plc:dev", "key": "AA==AA"},
    ],
)
async def test_check_mls_device_parameter_errors(db_pool: asyncpg.Pool, params: dict[str, str]) -> None:
    with pytest.raises(XrpcError) as info:
        await devices.check_mls_device(db_pool, MultiDict(params))
    assert (info.value.status, info.value.name) == (400, "InvalidRequest")


async def test_listing_catbird_pages_through_every_record(db_pool: asyncpg.Pool) -> None:
    for did in ("did:plc:a", "did:plc:b"):
        await seed_account(db_pool, did)
        await seed_catbird(db_pool, did, devices={f"d{i}": bytes([i]) * 32 for i in range(2)})
    uris: list[str] = []
    params: dict[str, str] = {"protocol": "catbird", "limit": "2"}
    while True:
        body = await handlers.list_bindings(db_pool, MultiDict(params))
        uris += [b["uri"] for b in body["bindings"]]
        assert all(b["protocol"] == "catbird" and "catbird" in b for b in body["bindings"])
        if "cursor" not in body:
            break
        params["cursor"] = body["cursor"]
    assert len(uris) == len(set(uris)) == 6


async def test_listing_germ(db_pool: asyncpg.Pool) -> None:
    await seed_account(db_pool, "did:plc:g")
    await seed_germ(db_pool, "did:plc:g")
    (listed,) = (await handlers.list_bindings(db_pool, MultiDict(protocol="germ")))["bindings"]
    assert listed["germ"]["keyAlgorithm"] == "ed25519" and listed["germ"]["keyPackage"]["checked"] is False


@pytest.mark.parametrize(
    "cursor",
    [
        "did:plc:a at://did:plc:a/x/y",  # not base64
        base64.urlsafe_b64encode(b"did:plc:a at://did:plc:b/x/y").decode(),  # another account's URI
        base64.urlsafe_b64encode(b"nodid at://nodid/x/y").decode(),
        base64.urlsafe_b64encode(b"did:plc:a at://did:plc:a/x/y z").decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
async def test_malformed_listing_cursors(db_pool: asyncpg.Pool, cursor: str) -> None:
    with pytest.raises(XrpcError) as info:
        await handlers.list_bindings(db_pool, MultiDict(protocol="catbird", cursor=cursor))
    assert info.value.name == "InvalidRequest"


async def test_identity_view_composes_catbird(db_pool: asyncpg.Pool) -> None:
    await seed_account(db_pool, "did:plc:cb")
    await seed_catbird(db_pool, "did:plc:cb", devices={"phone": DEVICE_KEY})
    body = await handlers.get_identity(db_pool, MultiDict(actor="did:plc:cb"))
    assert body["catbird"]["declaration"]["allowIncoming"] == "following"
    assert [d["deviceId"] for d in body["catbird"]["devices"]] == ["phone"]
    assert body["catbird"]["deliveryService"] == {"source": "declaration", "did": "did:web:chat.catbird.blue"}


async def test_resolve_xmtp_inbox_filters_by_the_environment_that_decided(db_pool: asyncpg.Pool) -> None:
    await seed_account(db_pool, "did:plc:prod", handle="prod.test")
    await seed_xmtp(db_pool, "did:plc:prod", env="production")
    await seed_account(db_pool, "did:plc:dev", handle="dev.test")
    await seed_xmtp(db_pool, "did:plc:dev", env="dev")
    both = await handlers.resolve_xmtp_inbox(db_pool, MultiDict(inboxId=INBOX_A))
    assert {(a["did"], a["env"]) for a in both["accounts"]} == {("did:plc:prod", "production"), ("did:plc:dev", "dev")}
    dev = await handlers.resolve_xmtp_inbox(db_pool, MultiDict(inboxId=INBOX_A, env="dev"))
    assert [a["did"] for a in dev["accounts"]] == ["did:plc:dev"]
    with pytest.raises(XrpcError):
        await handlers.resolve_xmtp_inbox(db_pool, MultiDict(inboxId=INBOX_A, env="no such env!"))
