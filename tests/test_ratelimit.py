"""api/ratelimit.py: the per-client-IP limit, its headers, trusted proxies and bounded memory."""

from __future__ import annotations

import ipaddress

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from atmx.api.app import create_app
from atmx.api.ratelimit import (
    EXPOSED_HEADERS,
    FixedWindowLimiter,
    RatePolicy,
    client_ip,
    client_key,
    parse_networks,
)
from atmx.indexer.config import ConfigError, from_env, parse_rate_limit

WALL = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def limiter(limit: int = 3, window: float = 10.0, max_clients: int = 100) -> tuple[FixedWindowLimiter, Clock]:
    clock = Clock()
    return FixedWindowLimiter(RatePolicy(limit, window), max_clients=max_clients, clock=clock, wall=lambda: WALL), clock


def test_fixed_window_counts_down_refuses_then_reopens() -> None:
    rl, clock = limiter()
    assert [rl.hit("a").remaining for _ in range(3)] == [2, 1, 0]
    clock.now += 4
    refused = rl.hit("a")
    assert not refused.allowed and refused.remaining == 0 and refused.retry_after == 6
    assert refused.reset_at == WALL + 6
    assert rl.hit("b").allowed  # clients are independent
    clock.now += 6
    reopened = rl.hit("a")
    assert reopened.allowed and reopened.remaining == 2


def test_table_is_bounded_and_expired_windows_are_dropped() -> None:
    rl, clock = limiter(limit=1, max_clients=50)
    for i in range(10_000):
        rl.hit(f"10.0.{i // 256}.{i % 256}")
        assert len(rl) <= 50
    clock.now += 11
    rl.hit("x")
    assert len(rl) == 1


def test_a_flood_of_new_addresses_cannot_reset_a_limited_client() -> None:
    rl, clock = limiter(limit=3, max_clients=100)
    honest, abuser = "198.51.100.7", "203.0.113.9"
    assert rl.hit(honest).allowed
    for _ in range(3):
        rl.hit(abuser)
    assert not rl.hit(abuser).allowed
    clock.now += 1
    for i in range(10_000):  # more new addresses than the table holds
        rl.hit(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
        assert len(rl) <= 101
    assert not rl.hit(abuser).allowed  # still limited: its window was not evicted
    assert [rl.hit(honest).remaining for _ in range(2)] == [1, 0]  # and the honest count kept
    clock.now += 10  # windows end as usual, and the table empties
    assert rl.hit(abuser).allowed
    assert len(rl) == 1


def test_newcomers_share_one_limited_bucket_while_the_table_is_full() -> None:
    rl, clock = limiter(limit=2, max_clients=3)
    for ip in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
        rl.hit(ip)
    assert [rl.hit(f"203.0.113.{i}").allowed for i in range(4)] == [True, True, False, False]
    assert len(rl) == 3
    assert rl.hit("198.51.100.1").allowed  # the counted clients keep their own windows
    clock.now += 10  # everything expires, the newcomer gets its own window again
    assert rl.hit("203.0.113.0").allowed and len(rl) == 1


def test_client_key_bills_ipv6_by_64_and_mapped_ipv4_as_ipv4() -> None:
    assert client_key("2001:db8:1:2:aaaa:bbbb:cccc:dddd") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::1")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("198.51.100.7") == "198.51.100.7"
    assert client_key("::ffff:198.51.100.7") == "198.51.100.7"
    assert client_key("[::1]") == "::/64"
    assert client_key("unknown") == "unknown"
    # a trusted IPv4 proxy is recognised when a dual-stack socket reports it IPv4-mapped
    assert client_ip("::ffff:127.0.0.1", ["198.51.100.1"], parse_networks("127.0.0.1")) == "198.51.100.1"


def test_client_ip_believes_forwarded_for_only_from_trusted_proxies() -> None:
    trusted = parse_networks("127.0.0.1, 10.0.0.0/8")
    assert client_ip("203.0.113.5", ["198.51.100.1"], trusted) == "203.0.113.5"
    assert client_ip("127.0.0.1", ["198.51.100.1"], ()) == "127.0.0.1"
    assert client_ip("127.0.0.1", ["198.51.100.1"], trusted) == "198.51.100.1"
    # a client cannot pick its bucket by prepending hops: the nearest untrusted hop wins
    assert client_ip("127.0.0.1", ["6.6.6.6, 198.51.100.1, 10.1.2.3"], trusted) == "198.51.100.1"
    assert client_ip("127.0.0.1", ["garbage, 198.51.100.1"], trusted) == "198.51.100.1"
    assert client_ip("127.0.0.1", ["198.51.100.1, garbage"], trusted) == "127.0.0.1"
    assert client_ip("127.0.0.1", [], trusted) == "127.0.0.1"
    assert client_ip(None, [], trusted) == "unknown"
    assert parse_networks("::1") == (ipaddress.ip_network("::1"),)


def test_setting_parses_and_defaults() -> None:
    assert parse_rate_limit("3000/300s") == (3000, 300.0)
    assert parse_rate_limit("100/1m") == (100, 60.0)
    assert parse_rate_limit("0") is None
    for bad in ("abc", "10", "10/", "10/-1s", "-1/5s"):
        with pytest.raises(ConfigError):
            parse_rate_limit(bad)
    assert from_env({}).api_rate_limit == (3000, 300.0)
    assert from_env({"ATMX_API_RATE_LIMIT": "0"}).api_rate_limit is None
    assert from_env({"ATMX_API_TRUSTED_PROXIES": "127.0.0.1"}).api_trusted_proxies == ("127.0.0.1",)
    with pytest.raises(ConfigError):
        from_env({"ATMX_API_TRUSTED_PROXIES": "not-an-ip"})


async def test_middleware_headers_on_every_response_and_429_with_retry_after(db_pool: asyncpg.Pool) -> None:
    rl = FixedWindowLimiter(RatePolicy(3, 300.0))
    app = create_app(pool_provider=lambda: db_pool, version="1", rate_limiter=rl)
    async with TestClient(TestServer(app)) as client:
        paths = ["/xrpc/directory.atmx.getIdentity?actor=did:plc:nobody", "/xrpc/nope.nope", "/no/such/path"]
        for expected_remaining, path in zip([2, 1, 0], paths, strict=True):
            resp = await client.get(path)
            assert resp.status in (400, 404, 501)  # errors built by the error middleware still carry them
            assert resp.headers["RateLimit-Limit"] == "3"
            assert resp.headers["RateLimit-Remaining"] == str(expected_remaining)
            assert resp.headers["RateLimit-Policy"] == "3;w=300"
            assert int(resp.headers["RateLimit-Reset"]) > 1_700_000_000  # epoch seconds
            assert resp.headers["Access-Control-Expose-Headers"] == EXPOSED_HEADERS
        resp = await client.get("/xrpc/_health")
        assert resp.status == 429
        assert await resp.json() == {"error": "RateLimitExceeded", "message": resp_message(await resp.json())}
        assert 1 <= int(resp.headers["Retry-After"]) <= 300
        assert resp.headers["RateLimit-Remaining"] == "0"
        assert resp.headers["Access-Control-Allow-Origin"] == "*"


def resp_message(body: dict[str, str]) -> str:
    assert body["message"].startswith("Rate limit exceeded")
    return body["message"]


async def test_forwarded_for_gives_each_client_behind_a_trusted_proxy_its_own_bucket(db_pool: asyncpg.Pool) -> None:
    rl = FixedWindowLimiter(RatePolicy(1, 300.0))
    app = create_app(
        pool_provider=lambda: db_pool, version="1", rate_limiter=rl, trusted_proxies=parse_networks("127.0.0.1")
    )
    async with TestClient(TestServer(app)) as client:
        for ip in ("198.51.100.1", "198.51.100.2"):
            assert (await client.get("/robots.txt", headers={"X-Forwarded-For": ip})).status == 200
        assert (await client.get("/robots.txt", headers={"X-Forwarded-For": "198.51.100.1"})).status == 429


async def test_one_ipv6_64_is_one_client(db_pool: asyncpg.Pool) -> None:
    # Anyone holding a /64 (the smallest IPv6 allocation) has 2^64 addresses: one bucket for all.
    rl = FixedWindowLimiter(RatePolicy(1, 300.0))
    app = create_app(
        pool_provider=lambda: db_pool, version="1", rate_limiter=rl, trusted_proxies=parse_networks("127.0.0.1")
    )
    async with TestClient(TestServer(app)) as client:

        async def status(ip: str) -> int:
            return (await client.get("/robots.txt", headers={"X-Forwarded-For": ip})).status

        assert await status("2001:db8:1:2::1") == 200
        assert await status("2001:db8:1:2:ffff:ffff:ffff:fffe") == 429  # same /64
        assert await status("2001:db8:1:3::1") == 200  # the next /64 is someone else
        assert await status("198.51.100.1") == 200
        assert await status("::ffff:198.51.100.1") == 429  # the same IPv4 client, mapped


async def test_no_limiter_means_no_headers(db_pool: asyncpg.Pool) -> None:
    async with TestClient(TestServer(create_app(pool_provider=lambda: db_pool, version="1"))) as client:
        resp = await client.get("/robots.txt")
        assert resp.status == 200 and "RateLimit-Limit" not in resp.headers
