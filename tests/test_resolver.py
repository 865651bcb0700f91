import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dns.asyncresolver
import dns.message
import dns.rcode
import dns.rrset
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from dns_server import DnsServer

from atmx.indexer.identity.cache import CachedDid
from atmx.indexer.identity.diddoc import DidInfo, parse_did_document
from atmx.indexer.identity.resolver import IdentityResolver, ResolutionError

FIXTURES = Path(__file__).parent / "fixtures" / "devnet-frames"
DID_DOCS: dict[str, dict[str, Any]] = json.loads((FIXTURES / "did-docs.json").read_text())
ALICE = "did:plc:nbcjflbg4exvv7izplf43elu"
BOB = "did:plc:vxtj3s3k4d4j4skhbkbxu2e2"


def plc_did(name: str) -> str:
    return "did:plc:" + name.ljust(24, "a")


def doc_for(did: str) -> dict[str, Any]:
    """Alice's document re-issued for another DID."""
    method = {**DID_DOCS[ALICE]["verificationMethod"][0], "controller": did}
    return {**DID_DOCS[ALICE], "id": did, "verificationMethod": [method]}


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # bytes sent as-is, anything else as JSON
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    stream: bool = False  # chunked, without Content-Length


class FakeNet:
    """One loopback HTTP server playing PLC, a did:web host, a resolveHandle service and well-known hosts."""

    def __init__(self) -> None:
        self.routes: dict[str, Reply] = {}
        self.hits: Counter[str] = Counter()
        self.url = ""
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = request.path_qs
        self.hits[key] += 1
        reply = self.routes.get(key, Reply(404, {"message": "DID not registered"}))
        if reply.delay:
            await asyncio.sleep(reply.delay)
        body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        if reply.stream:
            resp = web.StreamResponse(status=reply.status, headers=reply.headers)
            await resp.prepare(request)
            for i in range(0, len(body), 65536):
                await resp.write(body[i : i + 65536])
            await resp.write_eof()
            return resp
        return web.Response(status=reply.status, body=body, headers=reply.headers)

    def serve_plc(self, doc: dict[str, Any], did: str | None = None) -> None:
        self.routes[f"/{did or doc['id']}"] = Reply(body=doc)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class MemoryStore:
    def __init__(self) -> None:
        self.rows: dict[str, CachedDid] = {}
        self.loads = 0
        self.fail = False

    async def load_did(self, did: str) -> CachedDid | None:
        self.loads += 1
        if self.fail:
            raise ConnectionError("database is down")
        return self.rows.get(did)

    async def save_did(self, did: str, doc: dict[str, Any] | None, error: str | None, fetched_at: datetime) -> None:
        if self.fail:
            raise ConnectionError("database is down")
        self.rows[did] = CachedDid(doc=doc, error=error, fetched_at=fetched_at)


class WellKnownOnLoopback(IdentityResolver):  # type: ignore[misc,unused-ignore]  # atmx is Any to mypy here
    """Real resolver whose https://<handle>/.well-known/atproto-did lands on the loopback server.

    Handle hosts are stranger-named, so loopback must be allowed (`allow_insecure_http=True`).
    """

    base = ""

    def _well_known_url(self, handle: str) -> str:
        return f"{self.base}/wk/{handle}/.well-known/atproto-did"


@pytest.fixture
async def net() -> AsyncIterator[FakeNet]:
    fake = FakeNet()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    assert server.port is not None
    fake.port = server.port
    fake.url = f"http://127.0.0.1:{server.port}"
    for did, doc in DID_DOCS.items():
        fake.serve_plc(doc, did)
    yield fake
    await server.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def events() -> list[tuple[str, str]]:
    return []


@pytest.fixture
async def resolver(net: FakeNet, clock: Clock, events: list[tuple[str, str]]) -> AsyncIterator[IdentityResolver]:
    r = IdentityResolver(
        net.url,
        timeout=0.5,
        allow_insecure_http=True,
        clock=clock,
        on_result=lambda k, o: events.append((k, o)),
    )
    yield r
    await r.close()


async def expect_error(resolver: IdentityResolver, did: str, reason: str) -> ResolutionError:
    with pytest.raises(ResolutionError) as err:
        await resolver.resolve_did(did)
    assert err.value.reason == reason, err.value
    return err.value


# --- DIDs ---


async def test_resolves_reference_plc_documents_and_caches_in_memory(
    resolver: IdentityResolver, net: FakeNet, events: list[tuple[str, str]]
) -> None:
    for did, doc in DID_DOCS.items():
        assert await resolver.resolve_did(did) == parse_did_document(did, doc)
    info = await resolver.resolve_did(ALICE)
    assert info.signing_key == "did:key:zQ3shXffJV7XgVHuqumszzH34q62FisqHgG1pWuRxZA8Qhqru"
    assert info.pds == "http://localhost:2583"
    assert net.hits[f"/{ALICE}"] == 1
    assert events[:2] == [("did", "ok"), ("did", "miss")]
    assert events[-1] == ("did", "hit")


async def test_hit_ttl_expiry_refetches(resolver: IdentityResolver, net: FakeNet, clock: Clock) -> None:
    await resolver.resolve_did(ALICE)
    clock.now += 24 * 3600 - 1
    await resolver.resolve_did(ALICE)
    assert net.hits[f"/{ALICE}"] == 1
    clock.now += 2
    await resolver.resolve_did(ALICE)
    assert net.hits[f"/{ALICE}"] == 2


@pytest.mark.parametrize("status", [404, 410])
async def test_not_found_is_cached_for_the_error_ttl(
    resolver: IdentityResolver, net: FakeNet, clock: Clock, status: int
) -> None:
    did = plc_did("gone")
    net.routes[f"/{did}"] = Reply(status, {"message": "DID not available"})
    await expect_error(resolver, did, "not_found")
    clock.now += 119
    await expect_error(resolver, did, "not_found")
    assert net.hits[f"/{did}"] == 1
    clock.now += 2
    net.serve_plc(doc_for(did))
    assert (await resolver.resolve_did(did)).did == did
    assert net.hits[f"/{did}"] == 2


async def test_server_errors_are_unreachable_and_cached_only_briefly(
    resolver: IdentityResolver, net: FakeNet, clock: Clock, events: list[tuple[str, str]]
) -> None:
    did = plc_did("flaky")
    net.routes[f"/{did}"] = Reply(500, {"error": "oops"})
    await expect_error(resolver, did, "unreachable")
    await expect_error(resolver, did, "unreachable")
    assert net.hits[f"/{did}"] == 1
    clock.now += 11
    net.routes[f"/{did}"] = Reply(429, {"error": "slow down"})
    await expect_error(resolver, did, "unreachable")
    assert net.hits[f"/{did}"] == 2
    assert ("did", "unreachable") in events


async def test_slow_plc_times_out_as_unreachable(resolver: IdentityResolver, net: FakeNet) -> None:
    did = plc_did("slow")
    net.routes[f"/{did}"] = Reply(body=doc_for(did), delay=2.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await expect_error(resolver, did, "unreachable")
    assert loop.time() - started < 1.5


async def test_connection_refused_is_unreachable(clock: Clock) -> None:
    async with IdentityResolver("http://127.0.0.1:9", timeout=1, clock=clock) as r:
        await expect_error(r, ALICE, "unreachable")


@pytest.mark.parametrize(
    "reply",
    [
        Reply(body=b"{not json"),
        Reply(body=b"\xff\xfe"),
        Reply(body=[DID_DOCS[ALICE]]),
        Reply(body=b"[" * 100_000 + b"]" * 100_000),
        Reply(body=DID_DOCS[BOB]),  # a document for another DID
        Reply(body={**DID_DOCS[ALICE], "verificationMethod": "nope"}),
        Reply(body={**DID_DOCS[ALICE], "padding": "x" * (1 << 20)}),
        Reply(body={**DID_DOCS[ALICE], "padding": "x" * (1 << 20)}, stream=True),
        Reply(status=204, body=b""),
    ],
    ids=["garbage", "binary", "array", "deep", "wrong_id", "bad_field", "huge", "huge_chunked", "no_content"],
)
async def test_bad_documents(resolver: IdentityResolver, net: FakeNet, clock: Clock, reply: Reply) -> None:
    net.routes[f"/{ALICE}"] = reply
    await expect_error(resolver, ALICE, "bad_document")
    clock.now += 60
    await expect_error(resolver, ALICE, "bad_document")
    assert net.hits[f"/{ALICE}"] == 1


async def test_wrong_id_message_names_the_cause(resolver: IdentityResolver, net: FakeNet) -> None:
    net.routes[f"/{ALICE}"] = Reply(body=DID_DOCS[BOB])
    err = await expect_error(resolver, ALICE, "bad_document")
    assert "id_mismatch" in str(err)


async def test_concurrent_lookups_share_one_request(resolver: IdentityResolver, net: FakeNet) -> None:
    net.routes[f"/{ALICE}"] = Reply(body=DID_DOCS[ALICE], delay=0.2)
    results = await asyncio.gather(*(resolver.resolve_did(ALICE) for _ in range(25)))
    assert net.hits[f"/{ALICE}"] == 1
    assert len(set(results)) == 1 and results[0].did == ALICE


async def test_cancelled_caller_does_not_cancel_the_shared_lookup(resolver: IdentityResolver, net: FakeNet) -> None:
    net.routes[f"/{ALICE}"] = Reply(body=DID_DOCS[ALICE], delay=0.2)
    first = asyncio.create_task(resolver.resolve_did(ALICE))
    second = asyncio.create_task(resolver.resolve_did(ALICE))
    await asyncio.sleep(0.05)
    first.cancel()
    assert (await second).did == ALICE
    assert net.hits[f"/{ALICE}"] == 1


async def test_force_refresh_is_rate_limited(resolver: IdentityResolver, net: FakeNet, clock: Clock) -> None:
    await resolver.resolve_did(ALICE)
    renamed = {**DID_DOCS[ALICE], "alsoKnownAs": ["at://alice-again.test"]}
    net.serve_plc(renamed)
    assert (await resolver.resolve_did(ALICE, force_refresh=True)).handle == "alice-renamed.test"
    assert net.hits[f"/{ALICE}"] == 1
    clock.now += 61
    assert (await resolver.resolve_did(ALICE, force_refresh=True)).handle == "alice-again.test"
    assert (await resolver.resolve_did(ALICE)).handle == "alice-again.test"
    assert net.hits[f"/{ALICE}"] == 2


async def test_invalidate_makes_the_next_lookup_fetch(resolver: IdentityResolver, net: FakeNet) -> None:
    await resolver.resolve_did(ALICE)
    net.serve_plc({**DID_DOCS[ALICE], "alsoKnownAs": ["at://alice-again.test"]})
    resolver.invalidate(ALICE)
    assert (await resolver.resolve_did(ALICE)).handle == "alice-again.test"
    assert net.hits[f"/{ALICE}"] == 2
    resolver.invalidate(plc_did("neverseen"))  # harmless for unknown DIDs


async def test_invalidate_during_a_lookup_discards_its_answer(resolver: IdentityResolver, net: FakeNet) -> None:
    net.routes[f"/{ALICE}"] = Reply(body=DID_DOCS[ALICE], delay=0.2)
    in_flight = asyncio.create_task(resolver.resolve_did(ALICE))
    await asyncio.sleep(0.05)
    net.serve_plc({**DID_DOCS[ALICE], "alsoKnownAs": ["at://alice-again.test"]})
    resolver.invalidate(ALICE)
    assert (await in_flight).handle == "alice-renamed.test"  # the caller still gets its answer
    assert (await resolver.resolve_did(ALICE)).handle == "alice-again.test"
    assert net.hits[f"/{ALICE}"] == 2


async def test_outage_serves_the_previous_document(
    resolver: IdentityResolver, net: FakeNet, clock: Clock, events: list[tuple[str, str]]
) -> None:
    good = await resolver.resolve_did(ALICE)
    clock.now += 25 * 3600
    net.routes[f"/{ALICE}"] = Reply(503, {"error": "down"})
    assert await resolver.resolve_did(ALICE) == good
    assert events[-2:] == [("did", "stale"), ("did", "miss")]
    await resolver.resolve_did(ALICE)
    assert net.hits[f"/{ALICE}"] == 2  # stale answer is itself cached briefly
    with pytest.raises(ResolutionError) as err:
        await resolver.resolve_did(ALICE, force_refresh=True)
    assert err.value.reason == "unreachable"
    assert await resolver.resolve_did(ALICE) == good


async def test_did_web_on_localhost(resolver: IdentityResolver, net: FakeNet) -> None:
    did = f"did:web:localhost%3A{net.port}"
    net.routes["/.well-known/did.json"] = Reply(body=doc_for(did))
    info = await resolver.resolve_did(did)
    assert info.did == did and info.handle == "alice-renamed.test"
    assert net.hits["/.well-known/did.json"] == 1


async def test_did_web_on_localhost_needs_the_test_network_switch(net: FakeNet, clock: Clock) -> None:
    did = f"did:web:localhost%3A{net.port}"
    net.routes["/.well-known/did.json"] = Reply(body=doc_for(did))
    async with IdentityResolver(net.url, timeout=2, clock=clock) as r:
        await expect_error(r, did, "forbidden_address")  # localhost is loopback: not for strangers
    assert net.hits["/.well-known/did.json"] == 0


@pytest.mark.parametrize(
    ("did", "reason"),
    [
        ("did:web:example.com:user:alice", "unsupported_did_method"),
        ("did:key:zQ3shXffJV7XgVHuqumszzH34q62FisqHgG1pWuRxZA8Qhqru", "unsupported_did_method"),
        ("did:plc:UPPERCASEAAAAAAAAAAAAAAA", "invalid_did"),
        ("did:plc:short", "invalid_did"),
        ("did:plc:" + "a" * 24 + "\n", "invalid_did"),
        ("did:web:example.com%3A8443", "invalid_did"),
        ("did:web:under_score.com", "invalid_did"),
        ("not a did", "invalid_did"),
    ],
)
async def test_refused_dids_make_no_request(
    resolver: IdentityResolver, net: FakeNet, events: list[tuple[str, str]], did: str, reason: str
) -> None:
    await expect_error(resolver, did, reason)
    assert sum(net.hits.values()) == 0
    assert events == [("did", reason)]


async def test_redirects_are_followed_but_not_to_other_schemes(resolver: IdentityResolver, net: FakeNet) -> None:
    net.routes[f"/{ALICE}"] = Reply(302, b"", headers={"Location": "/moved"})
    net.routes["/moved"] = Reply(body=DID_DOCS[ALICE])
    assert (await resolver.resolve_did(ALICE)).did == ALICE
    net.routes[f"/{BOB}"] = Reply(301, b"", headers={"Location": "ftp://example.com/doc"})
    await expect_error(resolver, BOB, "bad_document")
    loop = plc_did("loop")
    net.routes[f"/{loop}"] = Reply(302, b"", headers={"Location": f"/{loop}"})
    await expect_error(resolver, loop, "bad_document")
    assert net.hits[f"/{loop}"] == 4


# --- the persistent cache ---


async def test_fresh_store_entry_answers_without_a_request(net: FakeNet, clock: Clock) -> None:
    store = MemoryStore()
    store.rows[ALICE] = CachedDid(DID_DOCS[ALICE], None, datetime.fromtimestamp(clock.now - 3600, UTC))
    store.rows[BOB] = CachedDid(None, "not_found", datetime.fromtimestamp(clock.now - 60, UTC))
    async with IdentityResolver(net.url, cache=store, clock=clock) as r:
        assert (await r.resolve_did(ALICE)).handle == "alice-renamed.test"
        await expect_error(r, BOB, "not_found")
        await r.resolve_did(ALICE)
    assert sum(net.hits.values()) == 0
    assert store.loads == 2  # the second ALICE lookup came from memory


async def test_stale_store_entry_is_refetched_and_saved(net: FakeNet, clock: Clock) -> None:
    store = MemoryStore()
    old_doc = {**DID_DOCS[ALICE], "alsoKnownAs": ["at://alice.test"]}
    store.rows[ALICE] = CachedDid(old_doc, None, datetime.fromtimestamp(clock.now - 25 * 3600, UTC))
    store.rows[BOB] = CachedDid(None, "not_found", datetime.fromtimestamp(clock.now - 121, UTC))
    gone = plc_did("gone")
    async with IdentityResolver(net.url, cache=store, clock=clock) as r:
        assert (await r.resolve_did(ALICE)).handle == "alice-renamed.test"
        assert (await r.resolve_did(BOB)).handle == "bob.test"
        await expect_error(r, gone, "not_found")
    assert store.rows[ALICE].doc == DID_DOCS[ALICE]
    assert store.rows[ALICE].fetched_at == datetime.fromtimestamp(clock.now, UTC)
    assert store.rows[gone] == CachedDid(None, "not_found", datetime.fromtimestamp(clock.now, UTC))


async def test_stale_store_entry_covers_an_outage(net: FakeNet, clock: Clock) -> None:
    store = MemoryStore()
    store.rows[ALICE] = CachedDid(DID_DOCS[ALICE], None, datetime.fromtimestamp(clock.now - 30 * 3600, UTC))
    net.routes[f"/{ALICE}"] = Reply(500, {})
    async with IdentityResolver(net.url, cache=store, clock=clock) as r:
        assert (await r.resolve_did(ALICE)).did == ALICE
    assert store.rows[ALICE].fetched_at.timestamp() == clock.now - 30 * 3600  # outage not persisted


async def test_invalidate_bypasses_the_store(net: FakeNet, clock: Clock) -> None:
    store = MemoryStore()
    old_doc = {**DID_DOCS[ALICE], "alsoKnownAs": ["at://alice.test"]}
    store.rows[ALICE] = CachedDid(old_doc, None, datetime.fromtimestamp(clock.now, UTC))
    async with IdentityResolver(net.url, cache=store, clock=clock) as r:
        r.invalidate(ALICE)
        assert (await r.resolve_did(ALICE)).handle == "alice-renamed.test"
    assert store.loads == 0


async def test_store_failures_do_not_stop_resolution(net: FakeNet, clock: Clock) -> None:
    store = MemoryStore()
    store.fail = True
    async with IdentityResolver(net.url, cache=store, clock=clock) as r:
        assert (await r.resolve_did(ALICE)).did == ALICE


async def test_damaged_store_row_is_ignored(net: FakeNet, clock: Clock) -> None:
    store = MemoryStore()
    store.rows[ALICE] = CachedDid(DID_DOCS[BOB], None, datetime.fromtimestamp(clock.now, UTC))
    async with IdentityResolver(net.url, cache=store, clock=clock) as r:
        assert (await r.resolve_did(ALICE)).handle == "alice-renamed.test"
    assert net.hits[f"/{ALICE}"] == 1


# --- handles ---


def resolve_handle_path(handle: str) -> str:
    return f"/xrpc/com.atproto.identity.resolveHandle?handle={handle}"


async def test_handle_via_resolver_service(net: FakeNet, clock: Clock) -> None:
    net.routes[resolve_handle_path("alice-renamed.test")] = Reply(body={"did": ALICE})
    net.routes[resolve_handle_path("bob.test")] = Reply(body={"did": ALICE})  # points elsewhere
    net.routes[resolve_handle_path("nobody.test")] = Reply(400, {"error": "HandleNotFound"})
    async with IdentityResolver(net.url, handle_resolver=net.url, clock=clock) as r:
        assert await r.resolve_handle("Alice-Renamed.TEST") == ALICE
        assert await r.resolve_handle("nobody.test") is None
        alice = await r.resolve_did(ALICE)
        assert await r.verify_handle(alice) == ("alice-renamed.test", True)
        assert await r.verify_handle(await r.resolve_did(BOB)) == ("bob.test", False)
        assert await r.verify_handle(DidInfo(ALICE, None, None, None)) == (None, False)
        await r.resolve_handle("alice-renamed.test")
    assert net.hits[resolve_handle_path("alice-renamed.test")] == 1


async def test_verify_handle_rechecks_a_handle_that_moved(net: FakeNet, clock: Clock) -> None:
    path = resolve_handle_path("bob.test")
    net.routes[path] = Reply(body={"did": ALICE})
    async with IdentityResolver(net.url, handle_resolver=net.url, clock=clock) as r:
        bob = await r.resolve_did(BOB)
        assert await r.verify_handle(bob) == ("bob.test", False)
        net.routes[path] = Reply(body={"did": BOB})
        clock.now += 61
        assert await r.verify_handle(bob) == ("bob.test", True)
    assert net.hits[path] == 2


async def test_handle_via_dns(
    net: FakeNet, clock: Clock, dns_server: tuple[DnsServer, dns.asyncresolver.Resolver]
) -> None:
    server, dns_resolver = dns_server
    server.records["_atproto.alice.example.com"] = ["did=" + ALICE, "unrelated=1", "did=not a did"]
    server.records["_atproto.conflict.example.com"] = ["did=" + ALICE, "did=" + BOB]
    net.routes["/wk/conflict.example.com/.well-known/atproto-did"] = Reply(body=ALICE.encode())
    net.routes["/wk/alice.example.com/.well-known/atproto-did"] = Reply(body=BOB.encode())
    async with WellKnownOnLoopback(net.url, dns_resolver=dns_resolver, clock=clock, allow_insecure_http=True) as r:
        r.base = net.url
        assert await r.resolve_handle("alice.example.com") == ALICE  # DNS wins over HTTPS
        assert await r.resolve_handle("conflict.example.com") is None
        assert await r.resolve_handle("nothing.example.com") is None
    assert server.queries == 3


async def test_handle_via_well_known(
    net: FakeNet, clock: Clock, dns_server: tuple[DnsServer, dns.asyncresolver.Resolver]
) -> None:
    _, dns_resolver = dns_server
    net.routes["/wk/bob.example.com/.well-known/atproto-did"] = Reply(body=f"  {BOB}\n".encode())
    net.routes["/wk/big.example.com/.well-known/atproto-did"] = Reply(body=BOB.encode() + b" " * 4096)
    net.routes["/wk/junk.example.com/.well-known/atproto-did"] = Reply(body=b"<html>hello</html>")
    net.routes["/wk/err.example.com/.well-known/atproto-did"] = Reply(500, BOB.encode())
    async with WellKnownOnLoopback(net.url, dns_resolver=dns_resolver, clock=clock, allow_insecure_http=True) as r:
        r.base = net.url
        assert await r.resolve_handle("bob.example.com") == BOB
        for handle in ("big.example.com", "junk.example.com", "err.example.com", "none.example.com"):
            assert await r.resolve_handle(handle) is None, handle


async def test_dns_timeout_falls_back_to_https(
    net: FakeNet, clock: Clock, dns_server: tuple[DnsServer, dns.asyncresolver.Resolver]
) -> None:
    server, dns_resolver = dns_server
    server.silent = True
    net.routes["/wk/bob.example.com/.well-known/atproto-did"] = Reply(body=BOB.encode())
    events: list[tuple[str, str]] = []
    async with WellKnownOnLoopback(
        net.url,
        dns_resolver=dns_resolver,
        clock=clock,
        allow_insecure_http=True,
        timeout=0.3,
        on_result=lambda k, o: events.append((k, o)),
    ) as r:
        r.base = net.url
        assert await r.resolve_handle("bob.example.com") == BOB
        assert await r.resolve_handle("gone.example.com") is None
    assert server.queries >= 2
    assert events[-1] == ("handle", "not_found")


async def test_handle_failures_are_cached_for_the_error_ttl(
    net: FakeNet, clock: Clock, dns_server: tuple[DnsServer, dns.asyncresolver.Resolver]
) -> None:
    server, dns_resolver = dns_server
    async with WellKnownOnLoopback(net.url, dns_resolver=dns_resolver, clock=clock, allow_insecure_http=True) as r:
        r.base = net.url
        assert await r.resolve_handle("later.example.com") is None
        server.records["_atproto.later.example.com"] = ["did=" + ALICE]
        assert await r.resolve_handle("later.example.com") is None
        clock.now += 121
        assert await r.resolve_handle("later.example.com") == ALICE
    assert server.queries == 2


@pytest.mark.parametrize("handle", ["nodots", "bad_char.com", "printer.local", "x.onion", "handle.invalid"])
async def test_invalid_handles_make_no_lookup(
    net: FakeNet, clock: Clock, dns_server: tuple[DnsServer, dns.asyncresolver.Resolver], handle: str
) -> None:
    server, dns_resolver = dns_server
    async with WellKnownOnLoopback(net.url, dns_resolver=dns_resolver, clock=clock, allow_insecure_http=True) as r:
        r.base = net.url
        assert await r.resolve_handle(handle) is None
    assert server.queries == 0 and sum(net.hits.values()) == 0


async def test_concurrent_handle_lookups_share_one_request(net: FakeNet, clock: Clock) -> None:
    path = resolve_handle_path("alice-renamed.test")
    net.routes[path] = Reply(body={"did": ALICE}, delay=0.2)
    async with IdentityResolver(net.url, handle_resolver=net.url, clock=clock) as r:
        results = await asyncio.gather(*(r.resolve_handle("alice-renamed.test") for _ in range(10)))
    assert results == [ALICE] * 10
    assert net.hits[path] == 1


async def test_invalidate_forgets_the_handle_too(net: FakeNet, clock: Clock) -> None:
    path = resolve_handle_path("alice-renamed.test")
    net.routes[path] = Reply(body={"did": ALICE})
    async with IdentityResolver(net.url, handle_resolver=net.url, clock=clock) as r:
        assert await r.verify_handle(await r.resolve_did(ALICE)) == ("alice-renamed.test", True)
        net.routes[path] = Reply(400, {"error": "HandleNotFound"})
        r.invalidate(ALICE)
        assert await r.resolve_handle("alice-renamed.test") is None
    assert net.hits[path] == 2
