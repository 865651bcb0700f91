"""indexer/identity/http.py: capped body reads against a real loopback server."""

from __future__ import annotations

import gzip
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import dns.asyncresolver
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from dns_server import DnsServer
from net_stubs import Listener, LyingResolver

from atmx.indexer.backfill.client import MAX_BODY, FetchError, _read_body
from atmx.indexer.identity import http as http_module
from atmx.indexer.identity.http import (
    BodyTooLarge,
    ForbiddenAddress,
    guarded_session,
    literal_host_reason,
    read_capped,
)
from atmx.indexer.identity.resolver import IdentityResolver, ResolutionError


async def _sized(request: web.Request) -> web.StreamResponse:
    return web.Response(body=b"x" * int(request.query["n"]))


async def _streamed(request: web.Request) -> web.StreamResponse:
    # chunked: no Content-Length, so the cap has to be enforced while reading
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for _ in range(int(request.query["chunks"])):
        await resp.write(b"y" * 4096)
    await resp.write_eof()
    return resp


async def _bomb(request: web.Request) -> web.StreamResponse:
    # 1 MiB of zeros in ~1 KiB on the wire
    body = gzip.compress(b"\0" * (1 << 20))
    return web.Response(body=body, headers={"Content-Encoding": "gzip"})


async def _huge(request: web.Request) -> web.StreamResponse:
    # declares more than the backfill cap; the reader must give up on the header alone
    resp = web.StreamResponse()
    resp.content_length = MAX_BODY + 1
    await resp.prepare(request)
    await resp.write(b"z" * 1024)
    return resp


@pytest.fixture
async def base() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/sized", _sized)
    app.router.add_get("/streamed", _streamed)
    app.router.add_get("/bomb", _bomb)
    app.router.add_get("/huge", _huge)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}"
    await server.close()


async def test_read_capped_reads_bodies_up_to_the_cap(base: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/sized", params={"n": "100"}) as resp:
            assert await read_capped(resp, 100) == b"x" * 100
        async with session.get(f"{base}/streamed", params={"chunks": "2"}) as resp:
            assert await read_capped(resp, 8192) == b"y" * 8192


async def test_read_capped_refuses_a_declared_length_over_the_cap_before_reading(base: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/sized", params={"n": "101"}) as resp:
        with pytest.raises(BodyTooLarge) as err:
            await read_capped(resp, 100)
        assert err.value.size == 101 and "101 bytes exceeds 100" in str(err.value)
        assert not resp.content.at_eof()  # nothing was read


async def test_read_capped_counts_streamed_and_decompressed_bytes(base: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/streamed", params={"chunks": "100"}) as resp:
            with pytest.raises(BodyTooLarge):
                await read_capped(resp, 8192)
        async with session.get(f"{base}/bomb") as resp:
            assert resp.content_length is not None and resp.content_length < 8192
            with pytest.raises(BodyTooLarge):
                await read_capped(resp, 8192)


async def test_backfill_read_body_keeps_its_fetch_error(base: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/sized", params={"n": "10"}) as resp:
            assert await _read_body(resp) == b"x" * 10
        async with session.get(f"{base}/huge") as resp:
            with pytest.raises(FetchError) as err:
                await _read_body(resp)
    assert err.value.reason == "too_large" and not err.value.retriable


# --- the SSRF guard, as the identity resolver uses it ------------------------------------


async def expect_did_error(r: IdentityResolver, did: str) -> str:
    with pytest.raises(ResolutionError) as err:
        await r.resolve_did(did)
    return err.value.reason


async def test_did_web_on_loopback_is_refused_without_a_connection(listener: Listener) -> None:
    events: list[tuple[str, str]] = []
    did = f"did:web:localhost%3A{listener.port}"
    async with IdentityResolver(timeout=2, on_result=lambda k, o: events.append((k, o))) as r:
        assert await expect_did_error(r, did) == "forbidden_address"
    assert listener.connections == 0
    assert ("did", "forbidden_address") in events


HOSTILE = ["127.0.0.1", "10.1.2.3", "169.254.169.254", "::1", "::ffff:127.0.0.1", "100.64.0.1", "fd00::1", "0.0.0.0"]


@pytest.mark.parametrize("address", HOSTILE)
async def test_did_web_host_resolving_to_a_forbidden_address_is_refused(listener: Listener, address: str) -> None:
    started = time.monotonic()
    lying = LyingResolver({"evil.example.com": [address]}, listener.port)
    async with IdentityResolver(timeout=1, address_resolver=lying) as r:
        assert await expect_did_error(r, "did:web:evil.example.com") == "forbidden_address"
    assert listener.connections == 0
    assert time.monotonic() - started < 0.5  # refused, not timed out


async def test_handle_host_resolving_to_loopback_is_refused(
    listener: Listener, dns_server: tuple[DnsServer, dns.asyncresolver.Resolver]
) -> None:
    _, dns_resolver = dns_server  # NXDOMAIN for _atproto.<handle>: the well-known file is asked
    events: list[tuple[str, str]] = []
    lying = LyingResolver({"victim.example.com": ["127.0.0.1", "::1"]}, listener.port)
    async with IdentityResolver(
        timeout=1, address_resolver=lying, dns_resolver=dns_resolver, on_result=lambda k, o: events.append((k, o))
    ) as r:
        assert await r.resolve_handle("victim.example.com") is None
    assert listener.connections == 0
    assert events[-1] == ("handle", "forbidden_address")


async def test_redirect_to_a_forbidden_address_is_refused_even_on_a_test_network(listener: Listener) -> None:
    # Loopback is allowed with allow_insecure_http; a redirect from there to the metadata
    # service or a private host is not.
    hops: list[str] = []
    target = [""]

    async def moved(request: web.Request) -> web.Response:
        hops.append(request.path)
        raise web.HTTPFound(target[0])

    app = web.Application()
    app.router.add_get("/.well-known/did.json", moved)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    did = f"did:web:localhost%3A{server.port}"
    try:
        for url in (
            f"http://169.254.169.254:{listener.port}/latest/meta-data/",
            f"http://[fd00::1]:{listener.port}/",
            "http://metadata.example.com/",
        ):
            target[0] = url
            lying = LyingResolver({"metadata.example.com": ["10.0.0.5"], "localhost": ["127.0.0.1"]})
            async with IdentityResolver(timeout=1, address_resolver=lying, allow_insecure_http=True) as r:
                assert await expect_did_error(r, did) == "forbidden_address", url
    finally:
        await server.close()
    assert len(hops) == 3


class PublicHostOnLoopback(IdentityResolver):  # type: ignore[misc,unused-ignore]  # atmx is Any to mypy here
    """The handle's well-known URL on a given base (no DNS TXT lookup: it answers NXDOMAIN)."""

    base = ""

    async def _resolve_dns(self, handle: str) -> tuple[str | None, str]:
        return None, "not_found"

    def _well_known_url(self, handle: str) -> str:
        return f"{self.base}/{handle}/.well-known/atproto-did"


async def test_public_host_redirecting_to_loopback_is_refused(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No public address is reachable from a test, so 127.0.0.2 plays the public host: the
    # guard is told (a deliberate lie) that it is public. Every other address is judged as usual.
    real = http_module.forbidden_reason

    def policy(address: Any, *, allow_loopback: bool = False) -> str | None:
        return None if str(address) == "127.0.0.2" else real(address, allow_loopback=allow_loopback)

    monkeypatch.setattr(http_module, "forbidden_reason", policy)
    hops: list[str] = []

    async def moved(request: web.Request) -> web.Response:
        hops.append(request.path)
        raise web.HTTPFound(TARGETS[len(hops) - 1])

    TARGETS = [
        f"https://127.0.0.1:{listener.port}/.well-known/atproto-did",
        f"https://[::1]:{listener.port}/",
        f"https://[::ffff:127.0.0.1]:{listener.port}/",
        "https://internal.example.com/",
        f"https://2130706433:{listener.port}/",  # 127.0.0.1 in a legacy numeric form
    ]
    app = web.Application()
    app.router.add_get("/{tail:.*}", moved)
    server = TestServer(app, host="127.0.0.2")
    await server.start_server()
    lying = LyingResolver({"public.example.com": ["127.0.0.2"], "internal.example.com": ["127.0.0.1"]})
    events: list[tuple[str, str]] = []
    try:
        async with PublicHostOnLoopback(
            timeout=1, address_resolver=lying, on_result=lambda k, o: events.append((k, o))
        ) as r:
            r.base = f"http://public.example.com:{server.port}"
            for i in range(len(TARGETS)):
                assert await r.resolve_handle(f"h{i}.example.com") is None
                assert events[-1] == ("handle", "forbidden_address"), TARGETS[i]
    finally:
        await server.close()
    assert len(hops) == len(TARGETS)  # the public hop was made each time...
    assert listener.connections == 0  # ...and the redirect to loopback never was
    assert "internal.example.com" in lying.asked


async def test_loopback_works_with_the_test_network_switch(listener: Listener) -> None:
    # What devnets rely on: did:web:localhost%3A<port> over http with allow_insecure_http.
    app = web.Application()
    did_holder: list[str] = []

    async def doc(_request: web.Request) -> web.Response:
        return web.json_response({"id": did_holder[0], "alsoKnownAs": ["at://alice.test"]})

    app.router.add_get("/.well-known/did.json", doc)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    did_holder.append(f"did:web:localhost%3A{server.port}")
    try:
        async with IdentityResolver(timeout=2, allow_insecure_http=True) as r:
            assert (await r.resolve_did(did_holder[0])).handle == "alice.test"
            lying = LyingResolver({"evil.example.com": ["10.0.0.1"]}, listener.port)
        async with IdentityResolver(timeout=1, allow_insecure_http=True, address_resolver=lying) as r:
            assert await expect_did_error(r, "did:web:evil.example.com") == "forbidden_address"
    finally:
        await server.close()


# --- the guard on its own -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "refused"),
    [
        ("example.com", False),  # a name: the resolver judges it
        ("93.184.215.14", False),
        ("127.0.0.1", True),
        ("[::1]", True),
        ("::ffff:7f00:1", True),
        ("127.1", True),
        ("2130706433", True),
        ("0x7f.1", False),  # not numeric to aiohttp either: it goes to the resolver
    ],
)
def test_literal_hosts(host: str, refused: bool) -> None:
    assert (literal_host_reason(host) is not None) is refused


async def test_guarded_session_refuses_literal_and_resolved_addresses_without_connecting(listener: Listener) -> None:
    lying = LyingResolver({"rebind.example.com": ["93.184.215.14", "127.0.0.1"]}, listener.port)
    async with guarded_session(resolver=lying) as session:
        for url in (
            f"http://127.0.0.1:{listener.port}/",
            f"http://[::1]:{listener.port}/",
            f"http://[::ffff:127.0.0.1]:{listener.port}/",
            "http://rebind.example.com/",  # one public and one loopback answer: all refused
        ):
            with pytest.raises(ForbiddenAddress):
                await session.get(url)
    async with guarded_session() as session:  # the system resolver
        for host in ("localhost", "0x7f.1"):  # the second: 127.0.0.1 to inet_aton
            with pytest.raises(ForbiddenAddress):
                await session.get(f"http://{host}:{listener.port}/")
    assert listener.connections == 0
    async with guarded_session(resolver=lying, allow_loopback=True) as session:
        with pytest.raises(aiohttp.ClientError) as err:  # allowed: it connects, and the listener hangs up
            await session.get(f"http://127.0.0.1:{listener.port}/")
        assert not isinstance(err.value, ForbiddenAddress)
    assert listener.connections >= 1  # aiohttp retries an idempotent request once on a reset
