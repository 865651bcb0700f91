"""End to end, Germ and Catbird: records written through the reference PDS travel the real
firehose (or a backfill's proofs) into atmx, and the API answers over HTTP.

Malformed variants are written with `validate=False`, as a client bypassing lexicon checks
would; every key is a real one (PyNaCl Ed25519, `cryptography` P-256, coincurve secp256k1).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import coincurve
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from devnet_harness import Account, Devnet, PdsClient, now_iso
from live_atmx import Atmx
from nacl.signing import SigningKey
from sample_records import handle

from atmx.api.app import create_app, run_api
from atmx.indexer.backfill.client import http_base
from atmx.indexer.backfill.job import backfiller, default_sources
from atmx.indexer.config import Settings
from atmx.indexer.records.registry import COLLECTIONS
from atmx.indexer.service import Indexer, run_indexer
from atmx.indexer.store.index_store import Store
from atmx.indexer.version import __version__

pytestmark = pytest.mark.devnet

GERM = "com.germnetwork.declaration"
DECLARATION = "blue.catbird.chat.declaration"
DEVICE = "blue.catbird.chat.device"
LEGACY_DEVICE = "blue.catbird.mlsChat.device"
WITHIN = 15.0  # seconds; the latency bar itself is test_service's business


def devnet_settings(devnet: Devnet) -> Settings:
    return Settings(
        relay=devnet.firehose_url,
        plc_url=devnet.plc_url,
        handle_resolver=devnet.pds_url,
        allow_insecure_http=True,
        stall_timeout=3600,
        xmtp_api="production=http://127.0.0.1:9",  # loopback: nothing here talks to XMTP
    )


@pytest.fixture
async def atmx(devnet: Devnet, db_pool: asyncpg.Pool) -> AsyncIterator[Atmx]:
    """The whole service as deployed: the live indexer with gap repair beside it (a new account's
    records come from a repair proof), and the API over HTTP."""
    settings = devnet_settings(devnet)
    async with aiohttp.ClientSession() as session:
        indexer = Indexer(settings, Store(db_pool), session)
        await indexer.start()
        task = asyncio.create_task(run_indexer(settings, indexer, db_pool, session))
        runner = await run_api(create_app(pool_provider=lambda: db_pool, version=__version__), "127.0.0.1", 0)
        host, port = runner.addresses[0][:2]
        try:
            await asyncio.wait_for(indexer.stream.connected.wait(), 10)
            yield Atmx(f"http://{host}:{port}", session, db_pool, indexer, [])
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await runner.cleanup()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def atbytes(raw: bytes) -> dict[str, str]:
    return {"$bytes": b64(raw).rstrip("=")}


def ed25519() -> bytes:
    return SigningKey.generate().verify_key.encode()


def p256_uncompressed() -> bytes:
    return (
        ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    )


def germ_record(key: bytes, *, algorithm: int = 3, url: str = "https://landing.ger.mx/newUser") -> dict[str, Any]:
    return {
        "$type": GERM,
        "version": "1.1.0",
        "currentKey": atbytes(bytes((algorithm,)) + key),
        "messageMe": {"messageMeUrl": url, "showButtonTo": "usersIFollow"},
        "keyPackage": atbytes(bytes(range(256)) * 2),
        "continuityProofs": [atbytes(b"\x03" * 98)],
    }


def declaration_record(allow: str = "following") -> dict[str, Any]:
    return {
        "$type": DECLARATION,
        "allowIncoming": allow,
        "deliveryService": "did:web:chat.catbird.blue",
        "protocolVersion": "1",
        "createdAt": now_iso(),
    }


def device_record(key: bytes, algorithm: str = "ed25519", *, legacy: bool = False) -> dict[str, Any]:
    record: dict[str, Any] = {
        "$type": LEGACY_DEVICE if legacy else DEVICE,
        "mlsSignaturePublicKey": atbytes(key),
        "algorithm": algorithm,
        "createdAt": now_iso(),
    }
    if legacy:
        record |= {"deviceId": "legacy-ipad", "deviceName": "iPad", "platform": "ios"}
    return record


async def until(what: str, check: Callable[[], Awaitable[bool]], within: float = WITHIN) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"API did not show {what} within {within}s")
        await asyncio.sleep(0.05)


async def identity(api: Atmx, actor: str) -> dict[str, Any]:
    status, body = await api.identity(actor)
    return body if status == 200 else {}


async def shows(api: Atmx, did: str, what: str, pick: Callable[[dict[str, Any]], Any], expected: Any) -> None:
    async def check() -> bool:
        try:
            return bool(pick(await identity(api, did)) == expected)
        except (KeyError, IndexError, TypeError):
            return False

    await until(what, check)


async def authorized(api: Atmx, did: str, key: bytes) -> bool:
    status, body = await api.xrpc("directory.atmx.checkMlsDevice", did=did, key=b64(key))
    assert status == 200, body
    assert body["did"] == did
    return bool(body["authorized"])


async def test_germ_declaration_lifecycle(atmx: Atmx, pds: PdsClient) -> None:
    alice: Account = await pds.create_account(handle())
    key = ed25519()
    _, cid = await pds.put_record(alice, GERM, "self", germ_record(key))
    await shows(atmx, alice.did, "the Germ declaration", lambda b: b["germ"]["cid"], cid)
    germ = (await identity(atmx, alice.handle))["germ"]
    assert germ["status"] == "valid" and "reason" not in germ
    assert germ["currentKey"] == atbytes(b"\x03" + key) and germ["keyAlgorithm"] == "ed25519"
    assert germ["keyPackage"] == {"size": 512, "checked": False} and germ["continuityProofs"] == 1
    assert germ["messageMe"]["showButtonToKnown"] is True
    assert germ["uri"] == f"at://{alice.did}/{GERM}/self"
    stored = await atmx.pool.fetchval("SELECT key_bytes FROM bindings WHERE uri = $1", germ["uri"])
    assert stored == key  # the 32-byte key, for key lookups

    # update: a new key replaces the old one
    rolled = ed25519()
    _, cid = await pds.put_record(alice, GERM, "self", germ_record(rolled))
    await shows(atmx, alice.did, "the rolled key", lambda b: b["germ"]["currentKey"], atbytes(b"\x03" + rolled))

    # malformed variants: stored invalid with the reason, never served as valid
    malformed = [
        (germ_record(rolled[:31]), "bad_key_length"),
        (germ_record(rolled, algorithm=2), "not_signing_key"),  # X25519 key agreement
        (germ_record(rolled, url="https://landing.ger.mx/newUser#did:plc:a+did:plc:b"), "message_me_url_fragment"),
    ]
    for record, reason in malformed:
        _, cid = await pds.put_record(alice, GERM, "self", record, validate=False)
        await shows(atmx, alice.did, reason, lambda b: (b["germ"]["cid"], b["germ"]["status"]), (cid, "invalid"))
        germ = (await identity(atmx, alice.did))["germ"]
        assert germ["reason"] == reason
        if reason != "message_me_url_fragment":  # a bad key is not shown; a bad URL leaves the key
            assert "currentKey" not in germ
        assert await atmx.pool.fetchval("SELECT key_bytes FROM bindings WHERE uri = $1", germ["uri"]) is None

    # a declaration under another record key is refused, not indexed
    await pds.put_record(alice, GERM, "other", germ_record(rolled), validate=False)

    async def rejected() -> bool:
        return bool(
            await atmx.pool.fetchval(
                "SELECT count(*) FROM rejections WHERE did = $1 AND reason = 'bad_rkey'", alice.did
            )
        )

    await until("the bad record key rejected", rejected)
    assert await atmx.pool.fetchval("SELECT count(*) FROM bindings WHERE uri LIKE '%/other'") == 0

    # delete: the last binding gone, the identity is unknown
    await pds.delete_record(alice, GERM, "self")

    async def gone() -> bool:
        status, body = await atmx.identity(alice.did)
        return status == 400 and body["error"] == "IdentityNotFound"

    await until("the declaration deleted", gone)


async def test_catbird_declaration_and_devices(atmx: Atmx, pds: PdsClient) -> None:
    bob = await pds.create_account(handle())
    _, decl_cid = await pds.put_record(bob, DECLARATION, "self", declaration_record())
    phone, laptop, k256 = ed25519(), p256_uncompressed(), coincurve.PrivateKey().public_key.format(compressed=True)
    legacy = ed25519()
    await pds.put_record(bob, DEVICE, "phone", device_record(phone))
    await pds.put_record(bob, DEVICE, "laptop", device_record(laptop, "p256"))
    await pds.put_record(bob, DEVICE, "k1", device_record(k256, "secp256k1"), validate=False)
    await pds.put_record(bob, DEVICE, "short", device_record(phone[:16]), validate=False)
    await pds.put_record(bob, LEGACY_DEVICE, "legacy-ipad", device_record(legacy, legacy=True), validate=False)

    # the first commit of a new account starts its chain; its records come from a repair proof
    await shows(
        atmx,
        bob.did,
        "the declaration and five devices",
        lambda b: (b["catbird"]["declaration"]["cid"], len(b["catbird"]["devices"])),
        (decl_cid, 5),
    )
    catbird = (await identity(atmx, bob.did))["catbird"]
    assert catbird["declaration"]["cid"] == decl_cid and catbird["declaration"]["allowIncoming"] == "following"
    assert catbird["deliveryService"] == {"source": "declaration", "did": "did:web:chat.catbird.blue"}
    devices = {d["deviceId"]: d for d in catbird["devices"]}
    assert [(d["deviceId"], d["legacy"]) for d in catbird["devices"]] == [
        ("k1", False),
        ("laptop", False),
        ("phone", False),
        ("short", False),
        ("legacy-ipad", True),
    ]
    assert (devices["phone"]["status"], devices["laptop"]["status"], devices["legacy-ipad"]["status"]) == (
        "valid",
        "valid",
        "valid",
    )
    assert (devices["k1"]["status"], devices["k1"]["reason"]) == ("invalid", "unsupported_algorithm")
    assert (devices["short"]["status"], devices["short"]["reason"]) == ("invalid", "bad_key_length")
    assert devices["laptop"]["mlsSignaturePublicKey"] == atbytes(laptop)  # as published

    # checkMlsDevice: current valid keys only (a P-256 key in either SEC1 form)
    compressed = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), laptop).public_bytes(
        Encoding.X962, PublicFormat.CompressedPoint
    )
    assert await authorized(atmx, bob.did, phone)
    assert await authorized(atmx, bob.did, laptop) and await authorized(atmx, bob.did, compressed)
    assert not await authorized(atmx, bob.did, k256)  # invalid device
    assert not await authorized(atmx, bob.did, phone[:16])  # invalid device
    assert not await authorized(atmx, bob.did, legacy)  # legacy collection never authorises
    assert not await authorized(atmx, bob.did, ed25519())  # unknown
    _, body = await atmx.xrpc("directory.atmx.checkMlsDevice", did=bob.did, key=b64(phone))
    assert body["device"]["deviceId"] == "phone" and body["device"]["uri"] == f"at://{bob.did}/{DEVICE}/phone"

    # one device deleted: gone from the identity and no longer authorised
    await pds.delete_record(bob, DEVICE, "phone")
    await shows(atmx, bob.did, "the phone deleted", lambda b: len(b["catbird"]["devices"]), 4)
    assert not await authorized(atmx, bob.did, phone)
    assert await authorized(atmx, bob.did, laptop)

    # an unknown allowIncoming: the declaration is invalid and names no delivery service
    _, bad_cid = await pds.put_record(bob, DECLARATION, "self", declaration_record("friends"), validate=False)
    await shows(atmx, bob.did, "the bad declaration", lambda b: b["catbird"]["declaration"]["cid"], bad_cid)
    catbird = (await identity(atmx, bob.did))["catbird"]
    assert catbird["declaration"]["status"] == "invalid"
    assert catbird["declaration"]["reason"] == "bad_allow_incoming" and "deliveryService" not in catbird
    await pds.put_record(bob, DECLARATION, "not-self", declaration_record(), validate=False)
    await pds.delete_record(bob, DECLARATION, "self")
    await shows(atmx, bob.did, "the declaration deleted", lambda b: "declaration" in b["catbird"], False)
    assert await atmx.pool.fetchval("SELECT count(*) FROM bindings WHERE uri LIKE '%/not-self'") == 0

    # listings: every record of the protocol, paged
    _, listed = await atmx.xrpc("directory.atmx.listBindings", protocol="catbird", limit=1000)
    mine = [b for b in listed["bindings"] if b["did"] == bob.did]
    assert sorted(b["catbird"]["deviceId"] for b in mine) == ["k1", "laptop", "legacy-ipad", "short"]


async def test_takedown_hides_every_family(atmx: Atmx, pds: PdsClient) -> None:
    carol = await pds.create_account(handle())
    key = ed25519()
    await pds.put_record(carol, GERM, "self", germ_record(ed25519()))
    await pds.put_record(carol, DECLARATION, "self", declaration_record())
    await pds.put_record(carol, DEVICE, "phone", device_record(key))
    await shows(atmx, carol.did, "carol's records", lambda b: ("germ" in b, len(b["catbird"]["devices"])), (True, 1))
    assert await authorized(atmx, carol.did, key)

    await pds.takedown(carol.did)

    async def hidden() -> bool:
        status, body = await atmx.identity(carol.did)
        return status == 400 and body["error"] == "IdentityNotFound"

    await until("taken-down carol hidden", hidden)
    assert not await authorized(atmx, carol.did, key)
    for protocol in ("germ", "catbird"):
        _, listed = await atmx.xrpc("directory.atmx.listBindings", protocol=protocol, limit=1000)
        assert carol.did not in {b["did"] for b in listed["bindings"]}

    await pds.reverse_takedown(carol.did)
    await shows(atmx, carol.did, "restored carol", lambda b: len(b["catbird"]["devices"]), 1)
    assert await authorized(atmx, carol.did, key)


async def test_backfill_fetches_the_new_collections_with_proofs(
    devnet: Devnet,
    pds: PdsClient,
    db_pool: asyncpg.Pool,
) -> None:
    assert {GERM, DECLARATION, DEVICE, LEGACY_DEVICE} <= set(COLLECTIONS)
    assert {s.collection for s in default_sources("https://relay.example")} == set(COLLECTIONS)
    dana = await pds.create_account(handle())
    await pds.put_record(dana, GERM, "self", germ_record(ed25519()))
    await pds.put_record(dana, DECLARATION, "self", declaration_record())
    keys = {f"dev-{i}": ed25519() for i in range(3)}
    for rkey, key in keys.items():
        await pds.put_record(dana, DEVICE, rkey, device_record(key))
    await pds.put_record(dana, LEGACY_DEVICE, "legacy-ipad", device_record(ed25519(), legacy=True), validate=False)
    settings = dataclasses.replace(devnet_settings(devnet), backfill_all_repos=True)  # a PDS, not a relay

    async def rows() -> dict[str, tuple[str, str, bool]]:
        """collection/rkey -> (status, cid, has a stored proof)"""
        found = await db_pool.fetch(
            """SELECT b.collection, b.rkey, b.status, b.cid, p.car IS NOT NULL AS proven
               FROM bindings b LEFT JOIN binding_proofs p ON p.uri = b.uri WHERE b.did = $1""",
            dana.did,
        )
        return {f"{r['collection']}/{r['rkey']}": (r["status"], r["cid"], r["proven"]) for r in found}

    async with aiohttp.ClientSession() as session, backfiller(settings, db_pool, session) as bf:
        # one listReposByCollection source per collection; the reference PDS keeps that method
        # for relays (401), so discovery falls back to its listRepos, once
        await bf.discover_all(default_sources(devnet.pds_url))
        sources = await db_pool.fetch("SELECT source FROM backfill_sources")
        assert {r["source"] for r in sources} == {f"repos:{http_base(devnet.pds_url)}"}
        assert await db_pool.fetchval("SELECT count(*) FROM backfill_repos WHERE did = $1", dana.did) == 1
        assert await bf.process(dana.did, "backfill") == "ok"
        first = await rows()
        assert set(first) == {
            f"{GERM}/self",
            f"{DECLARATION}/self",
            *(f"{DEVICE}/{rkey}" for rkey in keys),
            f"{LEGACY_DEVICE}/legacy-ipad",
        }
        assert all(status == "valid" and proven for status, _, proven in first.values())

        # a device deleted while atmx was not listening: the next pass proves it absent
        await pds.delete_record(dana, DEVICE, "dev-1")
        assert await bf.process(dana.did, "backfill") == "ok"
        second = await rows()
        assert set(second) == set(first) - {f"{DEVICE}/dev-1"}
        # the others are the same records, proven again
        assert second == {k: v for k, v in first.items() if k != f"{DEVICE}/dev-1"}
