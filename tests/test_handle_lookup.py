"""indexer/identity/handle_lookup.py: one handle lookup, through a resolver service or DNS and HTTPS.

Against a loopback DNS server and real HTTP, inside the resolver, it is test_resolver.py's and
test_http.py's; here each piece on its own."""

from __future__ import annotations

import asyncio
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.resolver
import pytest
from dns_server import DnsServer

from atmx.indexer.identity.handle_lookup import (
    Answer,
    dids_from_txt,
    is_resolvable_handle,
    resolve_dns,
    resolve_https,
    resolve_via_dns_and_https,
    resolve_via_service,
    well_known_url,
)
from atmx.indexer.identity.http import FetchFailed

DID = "did:plc:" + "a" * 24
OTHER = "did:plc:" + "b" * 24


class Reply:
    def __init__(self, status: int = 200, body: bytes = b"", fail: str | None = None) -> None:
        self.status, self.body, self.fail = status, body, fail
        self.calls: list[tuple[str, int, bool]] = []

    async def __call__(self, url: str, limit: int, *, stranger: bool) -> tuple[int, bytes]:
        self.calls.append((url, limit, stranger))
        if self.fail is not None:
            raise FetchFailed(self.fail, "no")
        return self.status, self.body


@pytest.mark.parametrize(
    ("handle", "ok"),
    [("alice.bsky.social", True), ("alice.test", True), ("alice.local", False), ("x.onion", False), ("nodot", False)],
)
def test_resolvable_handles(handle: str, ok: bool) -> None:
    assert is_resolvable_handle(handle) is ok


def test_well_known_url() -> None:
    assert well_known_url("alice.example.com") == "https://alice.example.com/.well-known/atproto-did"


def test_dids_from_txt() -> None:
    assert dids_from_txt([f"did={DID}".encode()]) == (DID, "ok")
    assert dids_from_txt([f"  did={DID} ".encode(), b"v=spf1 -all"]) == (DID, "ok")
    assert dids_from_txt([f"did={DID}".encode(), f"did={DID}".encode()]) == (DID, "ok")
    assert dids_from_txt([f"did={DID}".encode(), f"did={OTHER}".encode()]) == (None, "conflict")
    assert dids_from_txt([b"did=not-a-did"]) == (None, "not_found")
    assert dids_from_txt([]) == (None, "not_found")


async def test_service_lookup() -> None:
    get = Reply(body=f'{{"did": "{DID}"}}'.encode())
    assert await resolve_via_service(get, "https://resolver.test", "al ice.test") == (DID, "ok")
    assert get.calls == [
        ("https://resolver.test/xrpc/com.atproto.identity.resolveHandle?handle=al%20ice.test", 64 << 10, False)
    ]


@pytest.mark.parametrize(
    ("reply", "answer"),
    [
        (Reply(400, b'{"error": "HandleNotFound"}'), (None, "not_found")),
        (Reply(502), (None, "unreachable")),
        (Reply(429), (None, "unreachable")),
        (Reply(200, b"not json"), (None, "unreachable")),
        (Reply(200, b"[]"), (None, "unreachable")),
        (Reply(200, b'{"did": "nope"}'), (None, "not_found")),
        (Reply(fail="unreachable"), (None, "unreachable")),
    ],
)
async def test_service_answers(reply: Reply, answer: Answer) -> None:
    assert await resolve_via_service(reply, "https://resolver.test", "alice.test") == answer


async def test_https_lookup_is_a_strangers_host() -> None:
    get = Reply(body=f"{DID}\n".encode())
    assert await resolve_https(get, "https://alice.test/.well-known/atproto-did") == (DID, "ok")
    assert get.calls == [("https://alice.test/.well-known/atproto-did", 2048, True)]


@pytest.mark.parametrize(
    ("reply", "answer"),
    [
        (Reply(404), (None, "not_found")),
        (Reply(503), (None, "unreachable")),
        (Reply(200, b"<html>"), (None, "not_found")),
        (Reply(fail="unreachable"), (None, "unreachable")),
        (Reply(fail="forbidden_address"), (None, "forbidden_address")),
        (Reply(fail="too_large"), (None, "not_found")),
    ],
)
async def test_https_answers(reply: Reply, answer: Answer) -> None:
    assert await resolve_https(reply, "https://alice.test/.well-known/atproto-did") == answer


def _answer(value: Answer, delay: float = 0.0) -> Any:
    async def lookup() -> Answer:
        await asyncio.sleep(delay)
        return value

    return lookup


@pytest.mark.parametrize(
    ("dns", "https", "answer"),
    [
        ((DID, "ok"), (OTHER, "ok"), (DID, "ok")),  # DNS wins
        ((None, "conflict"), (OTHER, "ok"), (None, "conflict")),
        ((None, "not_found"), (OTHER, "ok"), (OTHER, "ok")),
        ((None, "unreachable"), (None, "unreachable"), (None, "unreachable")),
        ((None, "unreachable"), (None, "not_found"), (None, "not_found")),
        ((None, "not_found"), (None, "forbidden_address"), (None, "forbidden_address")),
    ],
)
async def test_dns_and_https_together(dns: Answer, https: Answer, answer: Answer) -> None:
    assert await resolve_via_dns_and_https(_answer(dns), _answer(https)) == answer


async def test_https_is_cancelled_once_dns_answers() -> None:
    cancelled = asyncio.Event()

    async def slow_https() -> Answer:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return None, "not_found"

    assert await resolve_via_dns_and_https(_answer((DID, "ok")), slow_https) == (DID, "ok")
    await asyncio.wait_for(cancelled.wait(), 1)


async def test_dns_lookup_on_loopback(dns_server: tuple[DnsServer, dns.asyncresolver.Resolver]) -> None:
    server, resolver = dns_server
    server.records["_atproto.alice.test"] = [f"did={DID}"]
    assert await resolve_dns(lambda: resolver, "alice.test", 2.0) == (DID, "ok")
    assert await resolve_dns(lambda: resolver, "bob.test", 2.0) == (None, "not_found")
    server.silent = True
    assert await resolve_dns(lambda: resolver, "alice.test", 0.3) == (None, "unreachable")


async def test_a_resolver_that_cannot_be_built_is_unreachable() -> None:
    def broken() -> dns.asyncresolver.Resolver:
        raise dns.resolver.NoResolverConfiguration("no /etc/resolv.conf")

    assert await resolve_dns(broken, "alice.test", 1.0) == (None, "unreachable")
