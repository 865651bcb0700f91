"""Per-client-IP rate limiting for the XRPC API: a fixed window per client, as aiohttp middleware.

Headers follow the reference xrpc-server (`RateLimit-Limit`, `-Remaining`, `-Reset` in epoch
seconds, `-Policy: <limit>;w=<seconds>`); an exhausted client gets 429 `RateLimitExceeded` with
`Retry-After`. `X-Forwarded-For` is only believed when the peer is a configured trusted proxy,
otherwise any client could pick its own bucket. An IPv6 client is billed by its /64: that is
the smallest block a site is given, so a single holder could otherwise mint 2^64 buckets.
"""

from __future__ import annotations

import ipaddress
import json
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from aiohttp import web

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Clock = Callable[[], float]

DEFAULT_MAX_CLIENTS = 65536
IPV6_CLIENT_PREFIX = 64
EXPOSED_HEADERS = "RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, RateLimit-Policy, Retry-After"


@dataclass(frozen=True, slots=True)
class RatePolicy:
    limit: int
    window: float  # seconds

    @property
    def header(self) -> str:
        return f"{self.limit};w={math.ceil(self.window)}"


def parse_networks(text: str) -> tuple[IpNetwork, ...]:
    """Comma-separated addresses or CIDR blocks (`127.0.0.1,10.0.0.0/8`)."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    policy: RatePolicy
    remaining: int
    reset_at: float  # epoch seconds when the client's window ends
    retry_after: int  # whole seconds to wait; 0 when allowed


class FixedWindowLimiter:
    """One window per client, opened by its first request.

    The table holds at most `max_clients` windows and never evicts a live one: evicting resets
    that client's count, so a flood of fresh addresses could wash away any client's limit,
    the abuser's own included. While the table is full, clients without a window share one
    overflow window under the same policy. The worst a flood can do is make newcomers share
    that window for as long as it keeps the table full (which takes `max_clients` fresh
    addresses or /64s every window); clients already counted keep their own counts, and
    memory stays at `max_clients` + 1 windows.
    """

    def __init__(
        self,
        policy: RatePolicy,
        *,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        self.policy = policy
        self.max_clients = max_clients
        self._clock = clock
        self._wall = wall
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()  # key -> (start, count)
        self._overflow: tuple[float, int] | None = None  # shared by clients that found the table full

    def __len__(self) -> int:
        return len(self._windows)

    def hit(self, key: str) -> Decision:
        now = self._clock()
        self._expire(now)
        entry = self._windows.get(key)
        if entry is None and len(self._windows) >= self.max_clients:
            if self._overflow is None or self._overflow[0] + self.policy.window <= now:
                self._overflow = (now, 0)
            decision, self._overflow = self._count(self._overflow, now)
            return decision
        decision, self._windows[key] = self._count(entry or (now, 0), now)
        return decision  # insertion order stays window-start order: only new keys are appended

    def _count(self, window: tuple[float, int], now: float) -> tuple[Decision, tuple[float, int]]:
        start, count = window
        left = max(0.0, start + self.policy.window - now)
        reset_at = self._wall() + left
        if count >= self.policy.limit:
            return Decision(False, self.policy, 0, reset_at, max(1, math.ceil(left))), window
        return Decision(True, self.policy, self.policy.limit - count - 1, reset_at, 0), (start, count + 1)

    def _expire(self, now: float) -> None:
        while self._windows:
            key, (start, _) = next(iter(self._windows.items()))
            if start + self.policy.window > now:
                return
            del self._windows[key]


def _parse_ip(text: str) -> IpAddress | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d: the same client as a.b.c.d.
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped or address


def _trusted(address: IpAddress, trusted: Iterable[IpNetwork]) -> bool:
    return any(address in network for network in trusted)


def client_ip(peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[IpNetwork]) -> str:
    """The address to bill: the peer, or when the peer is a trusted proxy, the nearest
    untrusted address in `X-Forwarded-For` (read right to left, as each proxy appends)."""
    address = _parse_ip(peer) if peer else None
    if address is None:
        return peer or "unknown"
    if not trusted or not _trusted(address, trusted):
        return str(address)
    hops = [hop for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        forwarded = _parse_ip(hop)
        if forwarded is None:
            break  # a garbled hop: do not trust anything to its left
        address = forwarded
        if not _trusted(address, trusted):
            break
    return str(address)


def client_key(address: str) -> str:
    """The bucket `address` (from `client_ip`) is billed to: an IPv4 address, or an IPv6 /64."""
    parsed = _parse_ip(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((parsed.packed, IPV6_CLIENT_PREFIX), strict=False))
    return str(parsed) if parsed is not None else address


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    return {
        "RateLimit-Limit": str(decision.policy.limit),
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(math.ceil(decision.reset_at)),
        "RateLimit-Policy": decision.policy.header,
        "Access-Control-Expose-Headers": EXPOSED_HEADERS,
    }


_DECISION = web.RequestKey("atmx_ratelimit_decision", Decision)


def rate_limit_middleware(
    limiter: FixedWindowLimiter, trusted: Sequence[IpNetwork] = ()
) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        address = client_ip(request.remote, request.headers.getall("X-Forwarded-For", []), trusted)
        decision = limiter.hit(client_key(address))
        request[_DECISION] = decision
        if decision.allowed:
            return await handler(request)
        body = {"error": "RateLimitExceeded", "message": f"Rate limit exceeded, retry in {decision.retry_after}s"}
        return web.Response(
            status=429,
            body=json.dumps(body).encode(),
            content_type="application/json",
            headers={"Retry-After": str(decision.retry_after)},
        )

    return middleware


async def add_rate_limit_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: headers on every response, including errors other middleware built."""
    decision = request.get(_DECISION)
    if isinstance(decision, Decision):
        response.headers.update(rate_limit_headers(decision))
