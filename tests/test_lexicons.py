"""The method lexicons in api/lexicons: well-formed, one per served method, and truthful.

Real responses from the running app are checked against them with the small validator of
tests/lexicon_validator.py.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from lexicon_validator import LEXICONS, NSID_RE, resolve, validate, validate_output
from seed import (
    DEVICE_KEY,
    INBOX_A,
    INBOX_B,
    device_record,
    germ_record,
    seed_account,
    seed_binding,
    seed_catbird,
    seed_did_doc,
    seed_didcomm,
    seed_germ,
    seed_xmtp,
)

from atmx.api.app import create_app
from atmx.api.handlers import METHODS

# --- the lexicon files -------------------------------------------------------------------


def test_every_served_method_has_a_lexicon_and_vice_versa() -> None:
    queries = {nsid for nsid, doc in LEXICONS.items() if doc["defs"].get("main", {}).get("type") == "query"}
    assert queries == set(METHODS)
    records = {nsid for nsid, doc in LEXICONS.items() if doc["defs"].get("main", {}).get("type") == "record"}
    assert records == {"org.xmtp.inbox", "at.didcomm.keyPackage"}
    assert "directory.atmx.defs" in LEXICONS


@pytest.mark.parametrize("nsid", sorted(LEXICONS))
def test_lexicon_is_well_formed(nsid: str) -> None:
    doc = LEXICONS[nsid]
    assert doc["lexicon"] == 1 and NSID_RE.fullmatch(nsid)
    assert set(doc) <= {"lexicon", "id", "description", "defs"}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "ref":
                resolve(node["ref"], nsid)  # KeyError when dangling
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(doc)
    main = doc["defs"].get("main")
    if main is None:
        return
    if main["type"] == "record":
        assert main["key"] == "literal:self"
        assert main["record"]["type"] == "object"
        assert set(main["record"]["required"]) <= set(main["record"]["properties"])
        return
    if main["type"] == "procedure":
        assert main["input"]["encoding"] == "application/json" and main["input"]["schema"]["type"] == "object"
        assert main["output"]["encoding"] == "application/json"
        return
    if main["type"] == "subscription":
        assert main["message"]["schema"]["type"] == "union"
        for ref in main["message"]["schema"]["refs"]:
            resolve(ref, nsid)
        return
    assert main["type"] == "query"
    params = main["parameters"]
    assert params["type"] == "params"
    assert set(params.get("required", [])) <= set(params["properties"])
    for spec in params["properties"].values():
        # Query-string parameters can only be scalars or arrays of scalars.
        kind = spec["type"] if spec["type"] != "array" else spec["items"]["type"]
        assert kind in {"string", "integer", "boolean"}
    if main["output"]["encoding"] == "application/vnd.ipld.car":
        assert "schema" not in main["output"]  # bytes, described in prose
    else:
        assert main["output"]["encoding"] == "application/json"
        assert main["output"]["schema"]["type"] in {"object", "ref"}
    for error in main["errors"]:
        assert re.fullmatch(r"[A-Z][A-Za-z]+", error["name"])


def test_validator_rejects_what_it_should() -> None:
    schema = {"type": "ref", "ref": "directory.atmx.defs#inboxAccount"}
    good = {"did": "did:plc:x", "handle": "handle.invalid", "status": "valid", "uri": "at://x", "cid": "bafy"}
    validate(good, schema, "directory.atmx.defs")
    for bad in (
        {k: v for k, v in good.items() if k != "cid"},
        {**good, "extra": 1},
        {**good, "did": "nope"},
        {**good, "status": 3},
        [good],
    ):
        with pytest.raises(AssertionError):
            validate(bad, schema, "directory.atmx.defs")


# --- real responses against the output schemas --------------------------------------------


@pytest.fixture
async def client(db_pool: asyncpg.Pool) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    await seed_account(db_pool, "did:plc:alice", handle="alice.test")
    await seed_xmtp(db_pool, "did:plc:alice")
    await seed_didcomm(db_pool, "did:plc:alice")
    await seed_account(db_pool, "did:web:bob.example", handle="bob.test", handle_verified=False, status="throttled")
    await seed_xmtp(
        db_pool, "did:web:bob.example", status="invalid", reason="bad_record", record={"id": 1}, inbox=INBOX_A
    )
    await seed_didcomm(db_pool, "did:web:bob.example", status="invalid", reason="bad_record", record={})
    await seed_account(db_pool, "did:plc:carol")
    await seed_xmtp(db_pool, "did:plc:carol", inbox=INBOX_B, status="pending", env=None, installation=None)
    # Germ and Catbird: valid records, malformed ones, a legacy device, a DID-document service
    await seed_germ(db_pool, "did:plc:alice")
    await seed_catbird(db_pool, "did:plc:alice", devices={"dev-1": DEVICE_KEY, "dev-2": bytes(range(32))})
    await seed_binding(
        db_pool,
        "did:plc:alice",
        "catbird",
        "blue.catbird.mlsChat.device",
        "old",
        device_record(legacy=True, deviceName="iPad", platform="ios"),
        key=DEVICE_KEY,
    )
    bad = germ_record(currentKey={"$bytes": "AgAA"}, messageMe={"messageMeUrl": "x", "showButtonTo": 3})
    await seed_germ(db_pool, "did:web:bob.example", record=bad, status="invalid", reason="not_signing_key")
    await seed_binding(
        db_pool,
        "did:web:bob.example",
        "catbird",
        "blue.catbird.chat.device",
        "k1",
        device_record(algorithm="secp256k1", mlsSignaturePublicKey=7),
        status="invalid",
        reason="unsupported_algorithm",
    )
    await seed_catbird(db_pool, "did:plc:carol", devices={})
    mls = {"id": "#atproto_mls", "type": "AtprotoMLSDeliveryService", "serviceEndpoint": "https://mls.example.com"}
    await seed_did_doc(db_pool, "did:plc:carol", [mls])
    app = create_app(pool_provider=lambda: db_pool, version="1")
    async with TestClient(TestServer(app)) as c:
        yield c


CALLS: list[tuple[str, list[tuple[str, str]]]] = [
    ("directory.atmx.getIdentity", [("actor", "alice.test")]),
    ("directory.atmx.getIdentity", [("actor", "did:web:bob.example")]),
    ("directory.atmx.getIdentity", [("actor", "did:plc:carol")]),
    (
        "directory.atmx.getIdentities",
        [("actors", "did:plc:alice"), ("actors", "bob.example"), ("actors", "x.test")],
    ),
    ("directory.atmx.getIdentities", [("actors", "did:web:bob.example"), ("actors", "did:plc:carol")]),
    ("directory.atmx.resolveXmtpInbox", [("inboxId", INBOX_A), ("includeUnverified", "true")]),
    ("directory.atmx.resolveXmtpInbox", [("inboxId", "0" * 64)]),
    ("directory.atmx.resolveXmtpInboxes", [("inboxIds", INBOX_A), ("inboxIds", INBOX_B)]),
    ("directory.atmx.resolveXmtpInboxes", [("inboxIds", INBOX_B), ("includeUnverified", "true")]),
    ("directory.atmx.listBindings", [("protocol", "xmtp"), ("limit", "2")]),
    ("directory.atmx.listBindings", [("protocol", "xmtp")]),
    ("directory.atmx.listBindings", [("protocol", "didcomm")]),
    ("directory.atmx.listBindings", [("protocol", "germ")]),
    ("directory.atmx.listBindings", [("protocol", "catbird"), ("limit", "2")]),
    ("directory.atmx.getIndexStatus", []),
    ("directory.atmx.checkMlsDevice", [("did", "did:plc:alice"), ("key", base64.b64encode(DEVICE_KEY).decode())]),
    ("directory.atmx.checkMlsDevice", [("did", "did:plc:alice"), ("key", "AAAA")]),
    ("directory.atmx.getBindingHistory", [("did", "did:plc:alice")]),
    ("directory.atmx.getBindingHistory", [("did", "did:plc:alice"), ("protocol", "xmtp"), ("limit", "1")]),
]
BINARY = {"directory.atmx.getBindingProof"}  # answers a CAR, checked in test_proofs


async def test_responses_match_output_schemas(client: TestClient[web.Request, web.Application]) -> None:
    for method, params in CALLS:
        resp = await client.get(f"/xrpc/{method}", params=params)
        assert resp.status == 200, await resp.text()
        validate_output(method, await resp.json())
    assert {method for method, _ in CALLS} | BINARY == set(METHODS)


async def test_error_names_are_declared(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.get("/xrpc/directory.atmx.getIdentity", params={"actor": "did:plc:nobody"})
    name = (await resp.json())["error"]
    declared = {e["name"] for e in LEXICONS["directory.atmx.getIdentity"]["defs"]["main"]["errors"]}
    assert name in declared


async def test_declared_parameters_are_accepted(client: TestClient[web.Request, web.Application]) -> None:
    # Every declared parameter, given a plausible value, is understood (no 400).
    samples = {
        "actor": "alice.test",
        "actors": "alice.test",
        "inboxId": INBOX_A,
        "inboxIds": INBOX_A,
        "includeUnverified": "true",
        "protocol": "xmtp",
        "status": "verified",
        "limit": "5",
        "cursor": "ZGlkOnBsYzph",
        "did": "did:plc:alice",
        "key": "AAAA",
        "uri": "at://did:plc:alice/org.xmtp.inbox/self",
        "env": "production",
    }
    cursors = {"directory.atmx.getBindingHistory": "12"}  # each method's own cursor form
    for method in set(METHODS) - BINARY:
        props = LEXICONS[method]["defs"]["main"]["parameters"]["properties"]
        params = {name: samples[name] for name in props} | ({"cursor": cursors[method]} if method in cursors else {})
        resp = await client.get(f"/xrpc/{method}", params=params)
        assert resp.status == 200, (method, await resp.text())
    # the proof of a binding with no stored proof is a named error, not a refused parameter
    resp = await client.get("/xrpc/directory.atmx.getBindingProof", params={"uri": samples["uri"]})
    assert resp.status == 400 and (await resp.json())["error"] == "ProofNotFound"
