"""The API as a hostile network sees it: the real app on a real port, a real PostgreSQL, a
loopback PLC, and the attacks of an unfriendly Internet thrown at it over real HTTP.

Only DNS lies: `did:web` issuers resolve, through an injected resolver, to the private
addresses an attacker would pick (there is no other way to make a public name point there
in a test). Every attack asserts the safe outcome: a clear 4xx, nothing fetched that should
not be, no connection to an internal address, no traceback in the log.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from forge import SigningKey
from jwt_samples import b64url, make_jwt, raw_jwt
from multidict import CIMultiDict
from net_stubs import Listener, LyingResolver
from pipeline_harness import CountingPlc
from raw_http import raw_request
from seed import seed_account, seed_xmtp

from atmx.api.app import create_app, run_api
from atmx.api.auth import ServiceAuth
from atmx.api.ratelimit import FixedWindowLimiter, RatePolicy, parse_networks
from atmx.indexer.identity.resolver import IdentityResolver

SERVICE_DID = "did:web:directory.example.com"
NSID = "directory.atmx.getIdentity"
ALICE = "did:plc:" + "a" * 24
LIMIT = 20
MAX_CLIENTS = 64
# What an attacker's did:web host resolves to; the loopback ones land on `Listener`'s port.
INTERNAL = {
    "loopback.example.com": ["127.0.0.1"],
    "loopback6.example.com": ["::1"],
    "mapped.example.com": ["::ffff:127.0.0.1"],
    "metadata.example.com": ["169.254.169.254"],
    "private.example.com": ["10.0.0.1"],
    "ula.example.com": ["fd00::1"],
    "cgnat.example.com": ["100.64.0.1"],
    "rebind.example.com": ["93.184.215.14", "127.0.0.1"],
}


@dataclass
class Edge:
    url: str
    plc: CountingPlc
    key: SigningKey  # ALICE's, registered in the PLC
    identity_events: list[tuple[str, str]]
    api_calls: list[tuple[str, int]] = field(default_factory=list)

    def token(self, **claims: Any) -> str:
        now = int(time.time())
        base = {"iss": ALICE, "aud": SERVICE_DID, "lxm": NSID, "iat": now, "exp": now + 60}
        return make_jwt(self.key, {**base, **claims})

    async def get(
        self, path: str, *, token: str | None = None, client: str = "198.51.100.1"
    ) -> tuple[int, dict[str, Any], CIMultiDict[str]]:
        headers = {"X-Forwarded-For": client}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with aiohttp.ClientSession() as session, session.get(self.url + path, headers=headers) as resp:
            body = await resp.json() if resp.content_type == "application/json" else {}
            return resp.status, body, resp.headers.copy()


@pytest.fixture
async def edge(db_pool: asyncpg.Pool, listener: Listener) -> AsyncIterator[Edge]:
    plc = CountingPlc()
    plc_app = web.Application()
    plc_app.router.add_get("/{did}", plc.handle)
    plc_runner = web.AppRunner(plc_app)
    await plc_runner.setup()
    await web.TCPSite(plc_runner, "127.0.0.1", 0).start()
    plc.url = "http://{}:{}".format(*plc_runner.addresses[0][:2])
    key = SigningKey.generate()
    plc.register(ALICE, key, handle="alice.test")
    await seed_account(db_pool, ALICE, handle="alice.test")
    await seed_xmtp(db_pool, ALICE)
    events: list[tuple[str, str]] = []
    resolver = IdentityResolver(
        plc.url,
        timeout=2,
        address_resolver=LyingResolver(INTERNAL, listener.port),
        on_result=lambda kind, outcome: events.append((kind, outcome)),
    )
    calls: list[tuple[str, int]] = []
    app = create_app(
        pool_provider=lambda: db_pool,
        version="1",
        metrics_hook=lambda method, status, _seconds: calls.append((method, status)),
        rate_limiter=FixedWindowLimiter(RatePolicy(LIMIT, 300.0), max_clients=MAX_CLIENTS),
        trusted_proxies=parse_networks("127.0.0.1"),  # the tests speak for many clients via X-Forwarded-For
        service_did=SERVICE_DID,
        service_auth=ServiceAuth(SERVICE_DID, resolver),
    )
    runner = await run_api(app, "127.0.0.1", 0)
    try:
        yield Edge("http://{}:{}".format(*runner.addresses[0][:2]), plc, key, events, calls)
    finally:
        await runner.cleanup()
        await resolver.close()
        await plc_runner.cleanup()


def assert_safe_challenge(headers: CIMultiDict[str]) -> None:
    challenge = headers["WWW-Authenticate"]
    assert challenge.isascii() and challenge.isprintable(), challenge


async def test_a_good_token_still_works(edge: Edge) -> None:
    status, body, _ = await edge.get(f"/xrpc/{NSID}?actor={ALICE}", token=edge.token())
    assert status == 200 and body["did"] == ALICE, body
    assert edge.plc.fetches == [ALICE]


async def test_did_web_issuers_pointing_inside_are_refused_without_a_connection(edge: Edge, listener: Listener) -> None:
    answers = []
    started = time.monotonic()
    for host in INTERNAL:
        status, body, headers = await edge.get(f"/xrpc/{NSID}?actor={ALICE}", token=edge.token(iss=f"did:web:{host}"))
        assert_safe_challenge(headers)
        answers.append((status, body))
    assert time.monotonic() - started < 5  # refused at once, not after connect timeouts
    assert answers == [(401, {"error": "BadJwtIssuer", "message": "could not resolve jwt issuer"})] * len(INTERNAL)
    assert listener.connections == 0
    assert edge.identity_events.count(("did", "forbidden_address")) == len(INTERNAL)
    # the same answer as an issuer PLC has never heard of: nothing tells the two apart
    unknown = await edge.get(f"/xrpc/{NSID}?actor={ALICE}", token=edge.token(iss="did:plc:" + "z" * 24))
    assert unknown[:2] == answers[0]


async def test_hostile_tokens_are_refused_before_any_fetch(edge: Edge, caplog: pytest.LogCaptureFixture) -> None:
    now = int(time.time())
    claims = f'"iss": "{ALICE}", "aud": "{SERVICE_DID}", "lxm": "{NSID}"'
    head, payload, _ = edge.token().split(".")
    object_alg = b64url(json.dumps({"alg": {"ES256K": 1}}).encode())

    def raw(payload_fields: str) -> str:  # JSON text as an attacker writes it, NaN and all
        return raw_jwt(edge.key, '{"alg": "ES256K"}', f"{{{claims}, {payload_fields}}}")

    attacks = {
        "nan_exp": (raw('"exp": NaN'), NSID),
        "infinite_iat": (raw(f'"exp": {now + 60}, "iat": -Infinity'), NSID),
        "huge_exp": (raw('"exp": 1' + "0" * 400), NSID),
        "list_typ": (make_jwt(edge.key, json.loads(f'{{{claims}, "exp": {now + 60}}}'), typ=["at+jwt"]), NSID),
        "object_alg": (f"{object_alg}.{payload}.{b64url(b'x' * 64)}", NSID),
        "short_signature": (f"{head}.{payload}.{b64url(b'x')}", NSID),
        "crlf_path": (edge.token(), f"{NSID}%0D%0AX-Injected:%201"),
        "nul_path": (edge.token(), f"{NSID}%00"),
        "non_ascii_path": (edge.token(), "%C3%A9t%C3%A9.example.x"),
    }
    with caplog.at_level(logging.INFO):
        for name, (token, method) in attacks.items():
            status, body, headers = await edge.get(f"/xrpc/{method}?actor={ALICE}", token=token)
            assert status == 401, (name, body)
            assert body["error"] in ("BadJwt", "BadJwtLexiconMethod"), (name, body)
            assert "X-Injected" not in headers
            assert_safe_challenge(headers)
    assert edge.plc.fetches == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert all(status == 401 for _, status in edge.api_calls)


async def test_an_ipv6_64_is_one_client_and_a_flood_resets_nobody(edge: Edge) -> None:
    robots = "/robots.txt"
    # One /64, a different address for every request: still one bucket.
    statuses = [(await edge.get(robots, client=f"2001:db8:66:1::{i:x}"))[0] for i in range(LIMIT + 1)]
    assert statuses == [200] * LIMIT + [429]
    # An honest client halfway through its allowance, then a flood of fresh /64s.
    for _ in range(LIMIT // 2):
        assert (await edge.get(robots, client="198.51.100.77"))[0] == 200
    for i in range(MAX_CLIENTS * 2):
        await edge.get(robots, client=f"2001:db8:{i:x}:2::1")
    assert (await edge.get(robots, client="2001:db8:66:1::ffff"))[0] == 429  # still limited
    status, _, headers = await edge.get(robots, client="198.51.100.77")
    assert status == 200 and int(headers["RateLimit-Remaining"]) == LIMIT - LIMIT // 2 - 1  # its count survived


async def test_an_over_long_request_line_is_an_xrpc_error(edge: Edge, caplog: pytest.LogCaptureFixture) -> None:
    host, port = edge.url.removeprefix("http://").rsplit(":", 1)
    line = b"GET /xrpc/directory.atmx.getIdentities?" + b"actors=x&" * (70 * 1024 // 9) + b" HTTP/1.1\r\n"
    assert len(line) > 70 * 1024
    with caplog.at_level(logging.DEBUG):
        status, headers, body = await raw_request(host, int(port), line + b"Host: atmx\r\n\r\n")
    assert status == 400 and headers["content-type"].startswith("application/json")
    assert headers["access-control-allow-origin"] == "*"
    assert json.loads(body)["error"] == "InvalidRequest"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert edge.api_calls == [("malformed", 400)]
