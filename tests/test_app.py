"""The XRPC API over real HTTP on loopback, against a real PostgreSQL."""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CONTENT_TYPE_LATEST
from raw_http import raw_request
from seed import INBOX_A, INBOX_B, SIGNATURE, seed_account, seed_didcomm, seed_xmtp

from atmx.api.app import create_app, run_api
from atmx.indexer.store.database import create_pool
from atmx.indexer.store.queries import HIDDEN_STATUSES

NS = "directory.atmx"
Client = TestClient[web.Request, web.Application]
HookCalls = list[tuple[str, int, float]]


def make_app(pool_provider: Callable[[], asyncpg.Pool], calls: HookCalls | None = None) -> web.Application:
    def hook(method: str, status: int, seconds: float) -> None:
        if calls is not None:
            calls.append((method, status, seconds))

    return create_app(pool_provider=pool_provider, version="9.9.9", metrics_hook=hook)


@pytest.fixture
def hook_calls() -> HookCalls:
    return []


@pytest.fixture
async def client(db_pool: asyncpg.Pool, hook_calls: HookCalls) -> AsyncIterator[Client]:
    async with TestClient(TestServer(make_app(lambda: db_pool, hook_calls))) as c:
        yield c


async def xrpc(client: Client, method: str, params: Any = None, status: int = 200) -> Any:
    resp = await client.get(f"/xrpc/{NS}.{method}", params=params)
    body = await resp.json()
    assert resp.status == status, body
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    return body


async def assert_error(client: Client, method: str, params: Any, name: str, status: int = 400) -> None:
    body = await xrpc(client, method, params, status)
    assert body["error"] == name and isinstance(body["message"], str)


# --- getIdentity / getIdentities ---------------------------------------------------------


async def test_get_identity_by_did_and_by_handle(client: Client, db_pool: asyncpg.Pool) -> None:
    await seed_account(db_pool, "did:plc:alice", handle="Alice.Test")
    await seed_xmtp(db_pool, "did:plc:alice")
    await seed_didcomm(db_pool, "did:plc:alice")

    body = await xrpc(client, "getIdentity", {"actor": "did:plc:alice"})
    assert body == {
        "did": "did:plc:alice",
        "handle": "Alice.Test",
        "accountStatus": "active",
        "xmtp": {
            "inboxId": INBOX_A,
            "verificationSignature": SIGNATURE,
            "status": "verified",
            "env": "production",
            "installationId": "cd" * 32,
            "uri": "at://did:plc:alice/org.xmtp.inbox/self",
            "cid": body["xmtp"]["cid"],
            "createdAt": "2026-01-02T03:04:05.678Z",
            "indexedAt": body["xmtp"]["indexedAt"],
            "verifiedAt": "2026-01-02T03:05:00.000Z",
        },
        "didcomm": {
            "did": "did:peer:2.Ez6LSexample",
            "mediators": ["did:web:mediator.example.com"],
            "label": "phone",
            "status": "valid",
            "uri": "at://did:plc:alice/at.didcomm.keyPackage/self",
            "cid": body["didcomm"]["cid"],
            "createdAt": "2026-01-02T03:04:05.678Z",
            "indexedAt": body["didcomm"]["indexedAt"],
        },
    }
    assert body["xmtp"]["indexedAt"].endswith("Z")
    assert await xrpc(client, "getIdentity", {"actor": "alice.TEST"}) == body


async def test_get_identity_only_has_keys_for_present_bindings(client: Client, db_pool: asyncpg.Pool) -> None:
    await seed_account(db_pool, "did:plc:x", status="desynchronized")
    await seed_xmtp(db_pool, "did:plc:x", status="invalid", reason="bad_signature")
    body = await xrpc(client, "getIdentity", {"actor": "did:plc:x"})
    assert "didcomm" not in body
    assert body["accountStatus"] == "desynchronized"
    assert body["xmtp"]["status"] == "invalid" and body["xmtp"]["reason"] == "bad_signature"
    assert "verifiedAt" not in body["xmtp"]


async def test_unverified_handle_cannot_be_looked_up(client: Client, db_pool: asyncpg.Pool) -> None:
    await seed_account(db_pool, "did:plc:mallory", handle="bob.test", handle_verified=False)
    await seed_xmtp(db_pool, "did:plc:mallory")
    await assert_error(client, "getIdentity", {"actor": "bob.test"}, "IdentityNotFound")
    body = await xrpc(client, "getIdentity", {"actor": "did:plc:mallory"})
    assert body["handle"] == "handle.invalid"


@pytest.mark.parametrize("status", HIDDEN_STATUSES)
async def test_hidden_account_is_not_found(client: Client, db_pool: asyncpg.Pool, status: str) -> None:
    await seed_account(db_pool, "did:plc:gone", handle="gone.test", status=status)
    await seed_xmtp(db_pool, "did:plc:gone")
    await seed_didcomm(db_pool, "did:plc:gone")
    for actor in ("did:plc:gone", "gone.test"):
        await assert_error(client, "getIdentity", {"actor": actor}, "IdentityNotFound")
    body = await xrpc(client, "getIdentities", [("actors", "did:plc:gone"), ("actors", "gone.test")])
    assert body == {"identities": [], "notFound": ["did:plc:gone", "gone.test"]}
    for include in ("true", "false"):
        body = await xrpc(client, "resolveXmtpInbox", {"inboxId": INBOX_A, "includeUnverified": include})
        assert body["accounts"] == []
    for protocol in ("xmtp", "didcomm"):
        assert (await xrpc(client, "listBindings", {"protocol": protocol}))["bindings"] == []


@pytest.mark.parametrize("status", [None, "active"])
async def test_active_account_is_shown(client: Client, db_pool: asyncpg.Pool, status: str | None) -> None:
    await seed_account(db_pool, "did:plc:here", status=status)
    await seed_didcomm(db_pool, "did:plc:here")
    assert (await xrpc(client, "getIdentity", {"actor": "did:plc:here"}))["accountStatus"] == "active"


async def test_get_identity_not_found_and_bad_params(client: Client, db_pool: asyncpg.Pool) -> None:
    await seed_account(db_pool, "did:plc:empty", handle="empty.test")
    for actor in ("did:plc:nobody", "nobody.test", "did:plc:empty", "empty.test"):
        await assert_error(client, "getIdentity", {"actor": actor}, "IdentityNotFound")
    for params in ({}, {"actor": ""}, {"actor": "not a handle"}, {"actor": "did:plc:"}, {"actor": "x" * 300}):
        await assert_error(client, "getIdentity", params, "InvalidRequest")
    await assert_error(client, "getIdentity", [("actor", "a.test"), ("actor", "b.test")], "InvalidRequest")


async def test_get_identities_batch(client: Client, db_pool: asyncpg.Pool) -> None:
    await seed_account(db_pool, "did:plc:alice", handle="alice.test")
    await seed_xmtp(db_pool, "did:plc:alice")
    await seed_account(db_pool, "did:plc:bob", handle="bob.test")
    await seed_didcomm(db_pool, "did:plc:bob")
    actors = ["bob.test", "did:plc:nobody", "did:plc:alice", "alice.test", "bob.test", "ghost.test"]
    body = await xrpc(client, "getIdentities", [("actors", a) for a in actors])
    assert [i["did"] for i in body["identities"]] == ["did:plc:bob", "did:plc:alice"]
    assert body["notFound"] == ["did:plc:nobody", "ghost.test"]
    assert "didcomm" in body["identities"][0] and "xmtp" in body["identities"][1]


async def test_get_identities_limits(client: Client, db_pool: asyncpg.Pool) -> None:
    await seed_account(db_pool, "did:plc:n000")
    await seed_xmtp(db_pool, "did:plc:n000")
    hundred = [("actors", f"did:plc:n{n:03d}") for n in range(100)]
    body = await xrpc(client, "getIdentities", hundred)
    assert len(body["identities"]) == 1 and len(body["notFound"]) == 99
    await assert_error(client, "getIdentities", [*hundred, ("actors", "did:plc:n100")], "InvalidRequest")
    await assert_error(client, "getIdentities", {}, "InvalidRequest")
    await assert_error(client, "getIdentities", [("actors", "did:plc:n000"), ("actors", "??")], "InvalidRequest")


# --- resolveXmtpInbox(es) ----------------------------------------------------------------


async def _seed_inboxes(pool: asyncpg.Pool) -> None:
    await seed_account(pool, "did:plc:v", handle="v.test")
    await seed_xmtp(pool, "did:plc:v", env="dev")
    await seed_account(pool, "did:plc:p", handle="p.test", handle_verified=False)
    await seed_xmtp(pool, "did:plc:p", status="pending", reason="inbox_lookup_failed", env=None)
    await seed_account(pool, "did:plc:w")
    await seed_xmtp(pool, "did:plc:w", inbox=INBOX_B)


async def test_resolve_xmtp_inbox(client: Client, db_pool: asyncpg.Pool) -> None:
    await _seed_inboxes(db_pool)
    body = await xrpc(client, "resolveXmtpInbox", {"inboxId": INBOX_A})
    assert body == {
        "inboxId": INBOX_A,
        "accounts": [
            {
                "did": "did:plc:v",
                "handle": "v.test",
                "status": "verified",
                "env": "dev",
                "verifiedAt": "2026-01-02T03:05:00.000Z",
                "uri": "at://did:plc:v/org.xmtp.inbox/self",
                "cid": body["accounts"][0]["cid"],
            }
        ],
    }
    body = await xrpc(client, "resolveXmtpInbox", {"inboxId": INBOX_A, "includeUnverified": "true"})
    assert [(a["did"], a["handle"], a["status"], a.get("reason")) for a in body["accounts"]] == [
        ("did:plc:p", "handle.invalid", "pending", "inbox_lookup_failed"),
        ("did:plc:v", "v.test", "verified", None),
    ]
    assert await xrpc(client, "resolveXmtpInbox", {"inboxId": "0" * 64}) == {
        "inboxId": "0" * 64,
        "accounts": [],
    }


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"inboxId": "A" * 64},
        {"inboxId": "a" * 63},
        {"inboxId": "a" * 65},
        {"inboxId": "g" * 64},
        {"inboxId": INBOX_A, "includeUnverified": "yes"},
    ],
)
async def test_resolve_xmtp_inbox_bad_params(client: Client, params: dict[str, str]) -> None:
    await assert_error(client, "resolveXmtpInbox", params, "InvalidRequest")


async def test_resolve_xmtp_inboxes(client: Client, db_pool: asyncpg.Pool) -> None:
    await _seed_inboxes(db_pool)
    ids = [INBOX_B, "0" * 64, INBOX_A, INBOX_B]
    body = await xrpc(client, "resolveXmtpInboxes", [("inboxIds", i) for i in ids])
    assert [(r["inboxId"], [a["did"] for a in r["accounts"]]) for r in body["inboxes"]] == [
        (INBOX_B, ["did:plc:w"]),
        ("0" * 64, []),
        (INBOX_A, ["did:plc:v"]),
    ]
    body = await xrpc(client, "resolveXmtpInboxes", [("inboxIds", INBOX_A), ("includeUnverified", "true")])
    assert [a["did"] for a in body["inboxes"][0]["accounts"]] == ["did:plc:p", "did:plc:v"]

    hundred = [("inboxIds", f"{n:064x}") for n in range(100)]
    assert len((await xrpc(client, "resolveXmtpInboxes", hundred))["inboxes"]) == 100
    await assert_error(client, "resolveXmtpInboxes", [*hundred, ("inboxIds", "f" * 64)], "InvalidRequest")
    await assert_error(client, "resolveXmtpInboxes", {}, "InvalidRequest")
    await assert_error(client, "resolveXmtpInboxes", [("inboxIds", INBOX_A), ("inboxIds", "x")], "InvalidRequest")


# --- listBindings ------------------------------------------------------------------------


async def test_list_bindings_walks_every_row_exactly_once(client: Client, db_pool: asyncpg.Pool) -> None:
    expected = []
    for n in range(25):
        did = f"did:plc:{n:04d}"
        hidden = n % 6 == 5
        await seed_account(db_pool, did, status="takendown" if hidden else None)
        await seed_xmtp(db_pool, did, status="invalid" if n % 4 == 0 else "verified")
        if not hidden:
            expected.append(did)
        if n % 3 == 0:
            await seed_didcomm(db_pool, did)

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"protocol": "xmtp", "limit": "7", **({"cursor": cursor} if cursor else {})}
        body = await xrpc(client, "listBindings", params)
        pages += 1
        assert len(body["bindings"]) <= 7
        seen += [b["did"] for b in body["bindings"]]
        cursor = body.get("cursor")
        if cursor is None:
            break
    assert seen == expected and pages == 3  # 21 visible rows: 7 + 7 + 7, and no empty trailing page
    assert len(expected) == 21

    first = (await xrpc(client, "listBindings", {"protocol": "xmtp", "limit": "1"}))["bindings"][0]
    assert first["protocol"] == "xmtp" and first["status"] == "invalid" and first["handle"] == "handle.invalid"
    assert first["xmtp"]["inboxId"] == INBOX_A and first["uri"] == first["xmtp"]["uri"]
    didcomm = (await xrpc(client, "listBindings", {"protocol": "didcomm"}))["bindings"]
    assert [b["did"] for b in didcomm] == [d for d in expected if int(d[-4:]) % 3 == 0]
    assert "cursor" not in (await xrpc(client, "listBindings", {"protocol": "didcomm"}))
    assert set(didcomm[0]) == {"did", "handle", "protocol", "status", "uri", "cid", "indexedAt", "didcomm"}


async def test_list_bindings_default_limit_is_100(client: Client, db_pool: asyncpg.Pool) -> None:
    await db_pool.executemany("INSERT INTO accounts (did) VALUES ($1)", [(f"did:plc:{n:04d}",) for n in range(101)])
    await db_pool.execute(
        """INSERT INTO bindings (did, protocol, collection, rkey, uri, cid, rev, record, status)
           SELECT did, 'didcomm', 'at.didcomm.keyPackage', 'self', 'at://' || did || '/at.didcomm.keyPackage/self',
                  'bafy', 'r', '{}', 'invalid'
           FROM accounts"""
    )
    body = await xrpc(client, "listBindings", {"protocol": "didcomm"})
    assert len(body["bindings"]) == 100
    assert base64.urlsafe_b64decode(body["cursor"] + "==").decode() == "did:plc:0099"
    body = await xrpc(client, "listBindings", {"protocol": "didcomm", "limit": "1000"})
    assert len(body["bindings"]) == 101 and "cursor" not in body


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"protocol": "email"},
        {"protocol": "xmtp", "limit": "0"},
        {"protocol": "xmtp", "limit": "1001"},
        {"protocol": "xmtp", "limit": "ten"},
        {"protocol": "xmtp", "limit": "-1"},
        {"protocol": "xmtp", "cursor": "!!!"},
        {"protocol": "xmtp", "cursor": base64.urlsafe_b64encode(b"not a did").decode()},
    ],
)
async def test_list_bindings_bad_params(client: Client, params: dict[str, str]) -> None:
    await assert_error(client, "listBindings", params, "InvalidRequest")


# --- health ------------------------------------------------------------------------------


async def test_health(client: Client, db_pool: asyncpg.Pool) -> None:
    resp = await client.get("/xrpc/_health")
    assert resp.status == 200
    assert await resp.json() == {
        "version": "9.9.9",
        "state": "disconnected",
        "cursor": None,
        "lagSeconds": None,
        "idleSeconds": None,
    }
    await db_pool.execute(
        "INSERT INTO cursors (upstream, seq, event_time) VALUES ('wss://x', 1234, now() - interval '5 seconds')"
    )
    body = await (await client.get("/xrpc/_health")).json()
    assert body["cursor"] == 1234 and 4 < body["lagSeconds"] < 30


async def test_health_and_queries_answer_503_on_a_closed_pool(db_dsn: str) -> None:
    pool = await create_pool(db_dsn, max_size=1)
    await pool.close()
    async with TestClient(TestServer(make_app(lambda: pool))) as c:
        resp = await c.get("/xrpc/_health")
        assert resp.status == 503
        assert await resp.json() == {"version": "9.9.9", "error": "DatabaseUnavailable"}
        resp = await c.get(f"/xrpc/{NS}.getIdentity", params={"actor": "did:plc:x"})
        assert resp.status == 503 and (await resp.json())["error"] == "DatabaseUnavailable"


async def test_health_answers_503_when_the_database_is_dropped(pg_server_dsn: str) -> None:
    name = f"atmx_dropped_{os.getpid()}"
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        base, _, query = pg_server_dsn.partition("?")
        pool = await create_pool(f"{base.rpartition('/')[0]}/{name}" + (f"?{query}" if query else ""), max_size=1)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    try:
        async with TestClient(TestServer(make_app(lambda: pool))) as c:
            resp = await c.get("/xrpc/_health")
            assert resp.status == 503 and (await resp.json())["error"] == "DatabaseUnavailable"
    finally:
        pool.terminate()


async def test_health_answers_503_when_no_pool_is_available() -> None:
    def no_pool() -> asyncpg.Pool:
        raise RuntimeError("reconnecting")

    async with TestClient(TestServer(make_app(no_pool))) as c:
        resp = await c.get("/xrpc/_health")
        assert resp.status == 503 and resp.headers["Access-Control-Allow-Origin"] == "*"


# --- errors, CORS, routing ---------------------------------------------------------------


async def test_unknown_method_and_wrong_http_method(client: Client) -> None:
    resp = await client.get(f"/xrpc/{NS}.nope")
    assert resp.status == 501
    assert await resp.json() == {"error": "MethodNotImplemented", "message": "Method Not Implemented"}
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert (await client.post(f"/xrpc/{NS}.nope")).status == 501

    resp = await client.post(f"/xrpc/{NS}.getIdentity", params={"actor": "did:plc:x"})
    assert resp.status == 405 and "GET" in resp.headers["Allow"]
    assert (await resp.json())["error"] == "InvalidRequest"
    assert (await client.post("/xrpc/_health")).status == 405

    resp = await client.get("/no/such/page")
    assert resp.status == 404 and (await resp.json())["error"] == "NotFound"
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    resp = await client.post("/metrics")
    assert resp.status == 405 and "GET" in resp.headers["Allow"]


async def test_head_is_answered_without_body(client: Client) -> None:
    resp = await client.head("/xrpc/_health")
    assert resp.status == 200 and await resp.read() == b""


async def test_cors_preflight(client: Client) -> None:
    for path in (f"/xrpc/{NS}.getIdentity", "/xrpc/_health", f"/xrpc/{NS}.nope"):
        resp = await client.options(
            path,
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "atproto-proxy, content-type",
            },
        )
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert resp.headers["Access-Control-Max-Age"] == "86400"
        assert "GET" in resp.headers["Access-Control-Allow-Methods"]
        assert resp.headers["Access-Control-Allow-Headers"] == "atproto-proxy, content-type"


async def test_cors_preflight_echoes_only_header_names(db_pool: asyncpg.Pool) -> None:
    # Whatever a client puts in Access-Control-Request-Headers must not come back verbatim.
    runner = await run_api(make_app(lambda: db_pool), "127.0.0.1", 0)
    try:
        host, port = runner.addresses[0][:2]
        for asked in ("\u00e9".encode(), b"x-a\xff", b"a\tb", b"a b", b"x-ok, <script>"):
            request = b"OPTIONS /xrpc/_health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
            status, headers, _ = await raw_request(
                host, port, request + b"Access-Control-Request-Headers: " + asked + b"\r\n\r\n"
            )
            assert status == 204
            assert headers["access-control-allow-headers"] == "*", (asked, headers)
    finally:
        await runner.cleanup()


async def test_unhandled_exception_is_a_generic_500(db_pool: asyncpg.Pool, hook_calls: HookCalls) -> None:
    async def boom(_request: web.Request) -> web.Response:
        raise RuntimeError("secret detail /etc/passwd")

    def broken_provider() -> asyncpg.Pool:
        raise RuntimeError("secret detail")

    app = make_app(lambda: db_pool, hook_calls)
    app.router.add_get("/boom", boom)
    async with TestClient(TestServer(app)) as c:
        resp = await c.get("/boom")
        assert resp.status == 500
        assert await resp.text() == '{"error":"InternalServerError","message":"Internal Server Error"}'
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
    async with TestClient(TestServer(make_app(broken_provider))) as c:
        resp = await c.get(f"/xrpc/{NS}.getIdentity", params={"actor": "did:plc:x"})
        assert resp.status == 500 and "secret" not in await resp.text()
    assert hook_calls[-1][:2] == ("/boom", 500)


async def test_metrics_robots_and_banner(client: Client) -> None:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert "python_info" in await resp.text()
    resp = await client.get("/robots.txt")
    assert resp.status == 200 and "User-agent: *" in await resp.text()
    resp = await client.get("/")
    text = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/plain"
    assert f"/xrpc/{NS}.getIdentity" in text and f"/xrpc/{NS}.listBindings" in text


async def test_metrics_hook_gets_bounded_labels(client: Client, hook_calls: HookCalls) -> None:
    await client.get(f"/xrpc/{NS}.getIdentity", params={"actor": "??"})
    await client.get("/xrpc/_health")
    await client.get(f"/xrpc/{NS}.random{os.getpid()}")
    await client.get(f"/random/{os.getpid()}")
    await client.get("/metrics")
    assert [(m, s) for m, s, _ in hook_calls] == [
        (f"{NS}.getIdentity", 400),
        ("_health", 200),
        ("unknown", 501),
        ("unknown", 404),
        ("/metrics", 200),
    ]
    assert all(0 <= seconds < 10 for _, _, seconds in hook_calls)


async def test_a_failing_metrics_hook_does_not_break_serving(db_pool: asyncpg.Pool) -> None:
    def hook(method: str, status: int, seconds: float) -> None:
        raise ValueError("broken metrics")

    app = create_app(pool_provider=lambda: db_pool, version="1", metrics_hook=hook)
    async with TestClient(TestServer(app)) as c:
        assert (await c.get("/xrpc/_health")).status == 200


async def test_run_api_serves_on_a_real_port(db_pool: asyncpg.Pool) -> None:
    runner = await run_api(create_app(pool_provider=lambda: db_pool, version="1"), "127.0.0.1", 0)
    try:
        host, port = runner.addresses[0][:2]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{host}:{port}/xrpc/_health") as resp,
        ):
            assert resp.status == 200 and (await resp.json())["version"] == "1"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /xrpc/directory.atmx.getIdentities?" + b"actors=x&" * 8000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: nope\r\n\r\n",
    ],
    ids=["request_line_70k", "header_70k", "bad_content_length"],
)
async def test_malformed_http_gets_an_xrpc_error_and_no_traceback(
    db_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture, request_bytes: bytes
) -> None:
    calls: HookCalls = []
    runner = await run_api(make_app(lambda: db_pool, calls), "127.0.0.1", 0)
    try:
        host, port = runner.addresses[0][:2]
        with caplog.at_level(logging.DEBUG):
            status, headers, body = await raw_request(host, port, request_bytes)
    finally:
        await runner.cleanup()
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert headers["access-control-allow-origin"] == "*"
    payload = json.loads(body)
    assert payload["error"] == "InvalidRequest" and isinstance(payload["message"], str)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info], caplog.records
    assert calls and calls[-1][:2] == ("malformed", 400)
