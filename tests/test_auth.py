"""Inter-service JWTs: real k256/p256 tokens, issuers served by a loopback PLC, every refusal,
and the reference PDS proxying a real call to atmx with `atproto-proxy`."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from devnet_harness import Devnet
from forge import SigningKey, high_s
from jwt_samples import b64url, make_jwt, raw_jwt
from pipeline_harness import CountingPlc
from seed import seed_account, seed_xmtp

from atmx.api.app import create_app, run_api
from atmx.api.auth import (
    REQUEST_ISSUER,
    SERVICE_ID,
    AuthError,
    Jwt,
    ServiceAuth,
    auth_middleware,
    bearer_token,
    check_claims,
    parse_jwt,
    verify_signature,
)
from atmx.indexer.identity.resolver import IdentityResolver
from atmx.indexer.repo.crypto import Curve

SERVICE_DID = "did:web:directory.example.com"
NSID = "directory.atmx.getIdentity"
ALICE = "did:plc:" + "a" * 24
NOW = 1_800_000_000.0


def claims(now: float = NOW, **overrides: Any) -> dict[str, Any]:
    base = {"iss": ALICE, "aud": SERVICE_DID, "lxm": NSID, "iat": int(now), "exp": int(now) + 60, "jti": "n1"}
    return {k: v for k, v in {**base, **overrides}.items() if v is not None}


def refused(fn: Callable[[], object]) -> str:
    with pytest.raises(AuthError) as info:
        fn()
    return info.value.name


# --- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize("curve", ["k256", "p256"])
def test_parse_and_verify_real_tokens(curve: Curve) -> None:
    key = SigningKey.generate(curve)
    jwt = parse_jwt(make_jwt(key, claims()))
    assert jwt.alg == ("ES256K" if curve == "k256" else "ES256")
    assert jwt.issuer == ALICE and len(jwt.signature) == 64
    assert verify_signature(jwt, key.did_key)
    assert not verify_signature(jwt, SigningKey.generate(curve).did_key)  # someone else's key
    assert not verify_signature(jwt, None)  # issuer document without an #atproto key
    assert not verify_signature(jwt, "did:key:zNotAKey")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "a.b.c.d",
        "..",
        "e30.e30.",  # empty signature
        "!!!.e30.AAAA",
        f"{b64url(b'[1]')}.e30.AAAA",  # header not an object
        f"{b64url(b'{}')}.{b64url(b'not json')}.AAAA",
        "eyJhbGciOiJFUzI1NksifQ==.e30.AAAA",  # padded base64url
        "x" * 9000,
    ],
)
def test_malformed_tokens(token: str) -> None:
    assert refused(lambda: parse_jwt(token)) == "BadJwt"


@pytest.mark.parametrize("alg", ["none", "HS256", "RS256", "EdDSA", None])
def test_unsupported_algorithms(alg: str | None) -> None:
    head = b64url(json.dumps({"typ": "JWT", **({"alg": alg} if alg else {})}).encode())
    token = f"{head}.{b64url(json.dumps(claims()).encode())}.{b64url(b'x' * 64)}"
    assert refused(lambda: parse_jwt(token)) == "BadJwt"


@pytest.mark.parametrize(
    "header",
    [
        {"alg": ["ES256K"]},
        {"alg": {"ES256K": 1}},
        {"alg": "ES256K", "typ": ["at+jwt"]},
        {"alg": "ES256K", "typ": {"at+jwt": 1}},
        {"alg": "ES256K", "typ": 7},
        {"alg": "ES256K", "typ": None},
        {"alg": "ES256K", "kid": ["k"]},
        {"alg": "ES256K", "kid": 5},
    ],
    ids=["alg_list", "alg_object", "typ_list", "typ_object", "typ_number", "typ_null", "kid_list", "kid_number"],
)
def test_header_fields_must_be_strings(header: dict[str, Any]) -> None:
    token = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims()).encode())}.{b64url(b'x' * 64)}"
    assert refused(lambda: parse_jwt(token)) == "BadJwt"


def test_signature_must_be_64_bytes() -> None:
    head, body, _ = make_jwt(SigningKey.generate(), claims()).split(".")
    for sig in (b"x", b"x" * 63, b"x" * 65, b"x" * 72):
        token = f"{head}.{body}.{b64url(sig)}"
        assert refused(lambda: parse_jwt(token)) == "BadJwt"  # noqa: B023 - called at once


@pytest.mark.parametrize("typ", ["at+jwt", "refresh+jwt", "dpop+jwt"])
def test_tokens_for_other_audiences_are_refused(typ: str) -> None:
    token = make_jwt(SigningKey.generate(), claims(), typ=typ)
    assert refused(lambda: parse_jwt(token)) == "BadJwtType"


def test_alg_must_name_the_key_curve() -> None:
    k256 = SigningKey.generate("k256")
    lying = parse_jwt(make_jwt(k256, claims(), alg="ES256"))  # valid k256 signature, P-256 alg
    assert not verify_signature(lying, k256.did_key)


def test_tampering_and_high_s_are_refused() -> None:
    key = SigningKey.generate("p256")
    good = parse_jwt(make_jwt(key, claims()))
    assert not verify_signature(Jwt(good.header, good.payload, good.signing_input + b"x", good.signature), key.did_key)
    assert not verify_signature(
        Jwt(good.header, good.payload, good.signing_input, high_s(good.signature, "p256")), key.did_key
    )
    # A payload swapped under a kept signature: the signature covers the bytes as sent.
    head, _, sig = make_jwt(key, claims()).split(".")
    forged = parse_jwt(f"{head}.{b64url(json.dumps(claims(lxm='x.y.z')).encode())}.{sig}")
    assert not verify_signature(forged, key.did_key)


def test_bearer_header() -> None:
    assert bearer_token(None) is None
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer  abc ") == "abc"
    assert refused(lambda: bearer_token("Basic dXNlcjpwdw==")) == "AuthenticationRequired"
    assert refused(lambda: bearer_token("Bearer ")) == "AuthenticationRequired"


# --- claims -------------------------------------------------------------------------------


def check(**overrides: Any) -> str:
    jwt = parse_jwt(make_jwt(SigningKey.generate(), claims(**overrides)))
    return check_claims(jwt, service_did=SERVICE_DID, nsid=NSID, now=NOW)


def test_good_claims_and_both_audience_forms() -> None:
    assert check() == ALICE
    assert check(aud=f"{SERVICE_DID}#{SERVICE_ID}") == ALICE
    assert check(iat=None) == ALICE  # iat is optional
    assert check(exp=NOW - 10) == ALICE  # within the clock skew
    assert check(iat=NOW + 10) == ALICE


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"aud": "did:web:other.example.com"}, "BadJwtAudience"),
        ({"aud": f"{SERVICE_DID}#atproto_labeler"}, "BadJwtAudience"),
        ({"aud": [SERVICE_DID]}, "BadJwtAudience"),
        ({"aud": None}, "BadJwtAudience"),
        ({"lxm": "directory.atmx.listBindings"}, "BadJwtLexiconMethod"),
        ({"lxm": None}, "BadJwtLexiconMethod"),
        ({"lxm": "*"}, "BadJwtLexiconMethod"),
        ({"exp": NOW - 120}, "JwtExpired"),
        ({"exp": None}, "BadJwt"),
        ({"exp": "soon"}, "BadJwt"),
        ({"exp": True}, "BadJwt"),
        ({"exp": NOW + 7 * 86400}, "BadJwt"),  # far longer than any PDS grants
        ({"iat": NOW + 600}, "BadJwt"),  # issued in the future
        ({"iss": "alice.test"}, "BadJwtIssuer"),
        ({"iss": None}, "BadJwtIssuer"),
    ],
)
def test_claim_refusals(overrides: dict[str, Any], name: str) -> None:
    assert refused(lambda: check(**overrides)) == name


@pytest.mark.parametrize(
    "payload",
    [
        '"exp": NaN',
        '"exp": Infinity',
        '"exp": -Infinity',
        '"exp": 1e400',  # a finite-looking literal that json reads as inf
        '"exp": 1' + "0" * 400,  # an integer too large for a float
        '"exp": 1800000060, "iat": NaN',
        '"exp": 1800000060, "iat": -Infinity',
    ],
)
def test_times_must_be_finite_numbers(payload: str) -> None:
    body = f'{{"iss": "{ALICE}", "aud": "{SERVICE_DID}", "lxm": "{NSID}", {payload}}}'
    token = raw_jwt(SigningKey.generate(), '{"alg": "ES256K"}', body)
    assert refused(lambda: check_claims(parse_jwt(token), service_did=SERVICE_DID, nsid=NSID, now=NOW)) == "BadJwt"


# --- ServiceAuth against a loopback PLC ---------------------------------------------------


@dataclass
class Env:
    plc: CountingPlc
    auth: ServiceAuth
    clock: list[float]


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    plc = CountingPlc()
    app = web.Application()
    app.router.add_get("/{did}", plc.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    plc.url = f"http://{host}:{port}"
    clock = [time.time()]
    async with IdentityResolver(plc.url, clock=lambda: clock[0]) as resolver:
        yield Env(plc, ServiceAuth(SERVICE_DID, resolver, clock=lambda: clock[0]), clock)
    await runner.cleanup()


def token_for(env: Env, key: SigningKey, **overrides: Any) -> str:
    return make_jwt(key, claims(now=env.clock[0], **overrides))


async def refused_async(call: Awaitable[str]) -> str:
    with pytest.raises(AuthError) as info:
        await call
    return info.value.name


@pytest.mark.parametrize("curve", ["k256", "p256"])
async def test_verify_resolves_the_issuer_key(env: Env, curve: Curve) -> None:
    key = SigningKey.generate(curve)
    env.plc.register(ALICE, key)
    assert await env.auth.verify(token_for(env, key), NSID) == ALICE
    assert await env.auth.verify(token_for(env, key, jti="n2"), NSID) == ALICE
    assert env.plc.fetches == [ALICE]  # the document is cached


async def test_bad_signature_refreshes_the_document_once(env: Env) -> None:
    env.plc.register(ALICE, SigningKey.generate())
    assert await refused_async(env.auth.verify(token_for(env, SigningKey.generate()), NSID)) == "BadJwtSignature"
    env.clock[0] += 120  # past the resolver's refresh interval: one refetch, still the wrong key
    assert await refused_async(env.auth.verify(token_for(env, SigningKey.generate()), NSID)) == "BadJwtSignature"
    assert env.plc.fetches == [ALICE, ALICE]


async def test_rotated_key_is_picked_up_by_the_refresh(env: Env) -> None:
    old, new = SigningKey.generate(), SigningKey.generate("p256")
    env.plc.register(ALICE, old)
    assert await env.auth.verify(token_for(env, old), NSID) == ALICE
    env.plc.register(ALICE, new)  # rotated in PLC; our cached document still has the old key
    env.clock[0] += 120
    assert await env.auth.verify(token_for(env, new), NSID) == ALICE
    assert env.plc.fetches == [ALICE, ALICE]


async def test_unknown_and_unreachable_issuers(env: Env) -> None:
    key = SigningKey.generate()
    assert await refused_async(env.auth.verify(token_for(env, key), NSID)) == "BadJwtIssuer"  # PLC 404
    assert await refused_async(env.auth.verify(token_for(env, key, iss="did:example:x"), NSID)) == "BadJwtIssuer"
    env.plc.down = True
    bob = "did:plc:" + "b" * 24
    assert await refused_async(env.auth.verify(token_for(env, key, iss=bob), NSID)) == "BadJwtIssuer"


def no_pool() -> asyncpg.Pool:
    raise AssertionError("a refused token never reaches a handler")


async def test_issuer_resolution_failures_are_indistinguishable(env: Env) -> None:
    # Whether an issuer's host exists, answers, or is internal must not show in the answer:
    # that would make the service a scanner of the hosts it can reach.
    key = SigningKey.generate()
    closed = free_port()
    async with IdentityResolver(env.plc.url, allow_insecure_http=True, timeout=2) as test_net:
        auths = [env.auth, ServiceAuth(SERVICE_DID, test_net, clock=lambda: env.clock[0])]
        cases = [
            (0, ALICE),  # PLC: 404
            (0, "did:plc:" + "b" * 24),  # PLC: 503 (set below)
            (0, f"did:web:localhost%3A{closed}"),  # loopback: forbidden_address
            (1, f"did:web:localhost%3A{closed}"),  # loopback allowed, nothing listening: unreachable
            (0, "did:example:x"),  # unsupported method
        ]
        answers = []
        for i, (which, iss) in enumerate(cases):
            env.plc.down = i == 1
            app = create_app(pool_provider=no_pool, version="1", service_did=SERVICE_DID, service_auth=auths[which])
            async with TestClient(TestServer(app)) as client:
                token = token_for(env, key, iss=iss)
                resp = await client.get(f"/xrpc/{NSID}", headers={"Authorization": f"Bearer {token}"})
                answers.append((resp.status, await resp.json(), resp.headers.get("WWW-Authenticate")))
    assert answers[0][0] == 401 and answers[0][1]["error"] == "BadJwtIssuer", answers[0]
    assert all(answer == answers[0] for answer in answers), answers


async def test_no_lookup_before_every_cheap_check_passes(env: Env) -> None:
    key = SigningKey.generate()
    env.plc.register(ALICE, key)
    now = env.clock[0]

    def body(**fields: Any) -> str:
        text = json.dumps(claims(now=now, exp=None, iat=None))[:-1]
        return text + "".join(f', "{k}": {v}' for k, v in fields.items()) + "}"

    head, payload, _ = token_for(env, key).split(".")
    crlf = f"{NSID}\r\nX-Injected: 1"
    hostile = [
        (raw_jwt(key, '{"alg": "ES256K"}', body(exp="NaN")), NSID),
        (raw_jwt(key, '{"alg": "ES256K"}', body(exp=int(now) + 60, iat="Infinity")), NSID),
        (raw_jwt(key, '{"alg": "ES256K"}', body(exp=int(now) + 60, iat="NaN")), NSID),
        (make_jwt(key, claims(now=now), typ=["JWT"]), NSID),
        (make_jwt(key, claims(now=now), kid=["k"]), NSID),
        (f"{head}.{payload}.{b64url(b'x')}", NSID),  # a signature that cannot be one
        (make_jwt(key, claims(now=now, lxm=crlf)), crlf),  # lxm matching a path that is no NSID
    ]
    outcomes = []
    for token, nsid in hostile:
        try:
            outcomes.append(await env.auth.verify(token, nsid))
        except Exception as exc:
            outcomes.append(getattr(exc, "name", type(exc).__name__))
    assert env.plc.fetches == [], outcomes
    assert outcomes == ["BadJwt"] * 6 + ["BadJwtLexiconMethod"], outcomes


async def test_claims_are_checked_before_any_lookup(env: Env) -> None:
    key = SigningKey.generate()
    env.plc.register(ALICE, key)
    for overrides, name in [({"aud": "did:web:x.example"}, "BadJwtAudience"), ({"exp": 1}, "JwtExpired")]:
        assert await refused_async(env.auth.verify(token_for(env, key, **overrides), NSID)) == name
    assert await refused_async(env.auth.verify(token_for(env, key), "directory.atmx.listBindings")) == (
        "BadJwtLexiconMethod"
    )
    assert env.plc.fetches == []


# --- the middleware -----------------------------------------------------------------------


async def test_middleware(env: Env) -> None:
    key = SigningKey.generate()
    env.plc.register(ALICE, key)

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"issuer": request.get(REQUEST_ISSUER)})

    app = web.Application(middlewares=[auth_middleware(env.auth)])
    app.router.add_route("*", "/xrpc/{nsid}", echo)
    app.router.add_get("/", echo)
    async with TestClient(TestServer(app)) as client:
        url = f"/xrpc/{NSID}"
        resp = await client.get(url)  # no token: public, unauthenticated
        assert resp.status == 200 and await resp.json() == {"issuer": None}
        resp = await client.get(url, headers={"Authorization": f"Bearer {token_for(env, key)}"})
        assert resp.status == 200 and await resp.json() == {"issuer": ALICE}

        resp = await client.get(url, headers={"Authorization": f"Bearer {token_for(env, key, lxm='x.y.z')}"})
        assert resp.status == 401
        assert (await resp.json())["error"] == "BadJwtLexiconMethod"
        challenge = resp.headers["WWW-Authenticate"]
        assert challenge.startswith(f'Bearer realm="{SERVICE_DID}", error="invalid_token"')
        assert '\\"lxm\\"' in challenge  # quotes in the description are escaped

        resp = await client.get(url, headers={"Authorization": "Bearer not-a-jwt"})
        assert resp.status == 401 and (await resp.json())["error"] == "BadJwt"
        resp = await client.get(url, headers={"Authorization": "Basic eDp5"})
        assert resp.status == 401 and 'error="invalid_request"' in resp.headers["WWW-Authenticate"]

        # Outside /xrpc/ and for CORS preflights, tokens are not looked at.
        resp = await client.get("/", headers={"Authorization": "Bearer not-a-jwt"})
        assert resp.status == 200
        resp = await client.options(url, headers={"Authorization": "Bearer not-a-jwt"})
        assert resp.status == 200


async def test_hostile_tokens_and_paths_get_a_401_never_a_500(env: Env) -> None:
    key = SigningKey.generate()
    env.plc.register(ALICE, key)
    app = create_app(pool_provider=no_pool, version="1", service_did=SERVICE_DID, service_auth=env.auth)
    async with TestClient(TestServer(app)) as client:
        for token, path in [
            (make_jwt(key, claims(now=env.clock[0]), typ=["at+jwt"]), f"/xrpc/{NSID}"),
            (make_jwt(key, claims(now=env.clock[0]), alg=["ES256K"]), f"/xrpc/{NSID}"),
            (token_for(env, key), f"/xrpc/{NSID}%0D%0AX-Injected:%201"),
            (token_for(env, key), f"/xrpc/{NSID}%0AX-Injected:%201"),
            (token_for(env, key), "/xrpc/%C3%A9t%C3%A9.example.x"),
            (token_for(env, key), "/xrpc/a.b.c%00"),
        ]:
            resp = await client.get(path, headers={"Authorization": f"Bearer {token}"})
            body = await resp.json()
            assert resp.status == 401, (path, body)
            assert body["error"] in ("BadJwt", "BadJwtLexiconMethod"), body
            challenge = resp.headers["WWW-Authenticate"]
            assert challenge.isascii() and challenge.isprintable() and "X-Injected" not in resp.headers
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert env.plc.fetches == []


# --- end to end: the reference PDS proxies to atmx ----------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RecordingAuth(ServiceAuth):
    """The real checks, plus a log of what passed them."""

    verified: list[tuple[str, str]]

    async def verify(self, token: str, nsid: str) -> str:
        issuer = await super().verify(token, nsid)
        self.verified.append((issuer, parse_jwt(token).payload["aud"]))
        return issuer


@pytest.mark.devnet
async def test_reference_pds_proxies_with_a_service_jwt(devnet: Devnet, db_pool: asyncpg.Pool) -> None:
    port = free_port()
    service_did = f"did:web:localhost%3A{port}"  # the PDS fetches did:web:localhost over http
    async with devnet.client() as pds, IdentityResolver(devnet.plc_url, allow_insecure_http=True) as resolver:
        user = await pds.create_account(f"proxy{port}.test")
        await seed_account(db_pool, user.did, handle=user.handle)
        await seed_xmtp(db_pool, user.did)
        auth = RecordingAuth(service_did, resolver)
        auth.verified = []
        app = create_app(
            pool_provider=lambda: db_pool,
            version="1",
            service_did=service_did,
            service_endpoint=f"http://localhost:{port}",
            service_auth=auth,
        )
        runner = await run_api(app, "127.0.0.1", port)
        try:
            async with aiohttp.ClientSession() as http:
                headers = {
                    "Authorization": f"Bearer {user.access_jwt}",
                    "atproto-proxy": f"{service_did}#{SERVICE_ID}",
                }
                async with http.get(
                    f"{devnet.pds_url}/xrpc/{NSID}", params={"actor": user.did}, headers=headers
                ) as resp:
                    body = await resp.json()
                    assert resp.status == 200, body
                assert body["did"] == user.did and body["xmtp"]["status"] == "verified"
                # PDS 0.5.35 puts the bare service DID in `aud`; other issuers add `#atmx_directory`.
                assert auth.verified == [(user.did, service_did)]

                # A token the PDS minted for another method is refused when replayed here.
                minted = json.loads(
                    await pds.call(
                        "GET",
                        "com.atproto.server.getServiceAuth",
                        params={"aud": service_did, "lxm": "directory.atmx.listBindings"},
                        token=user.access_jwt,
                    )
                )["token"]
                async with http.get(
                    f"http://127.0.0.1:{port}/xrpc/{NSID}",
                    params={"actor": user.did},
                    headers={"Authorization": f"Bearer {minted}"},
                ) as resp:
                    assert resp.status == 401
                    assert (await resp.json())["error"] == "BadJwtLexiconMethod"
                    assert "WWW-Authenticate" in resp.headers
        finally:
            await runner.cleanup()
