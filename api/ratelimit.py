"""Per-client-IP rate limiting for the XRPC API: a fixed window per client, as aiohttp middleware.

Headers follow the reference xrpc-server (`RateLimit-Limit`, `-Remaining`, `-Reset` in epoch
seconds, `-Policy: <limit>;w=<seconds>`); an exhausted client gets 429 `RateLimitExceeded` with
`Retry-After`. `X-Forwarded-For` is only believed when the peer is a configured trusted proxy,
otherwise any client could pick its own bucket.
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
Clock = Callable[[], float]

DEFAULT_MAX_CLIENTS = 65536
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
    """One window per client, opened by its first request. The table holds at most `max_clients`
    entries: expired windows are dropped first, then the least recently opened one, which
    forgives that client early rather than letting a flood of addresses grow memory."""

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

    def __len__(self) -> int:
        return len(self._windows)

    def hit(self, key: str) -> Decision:
        now = self._clock()
        self._expire(now)
        entry = self._windows.get(key)
        if entry is None:
            while len(self._windows) >= self.max_clients:
                self._windows.popitem(last=False)
            start, count = now, 0
        else:
            start, count = entry
        left = max(0.0, start + self.policy.window - now)
        reset_at = self._wall() + left
        if count >= self.policy.limit:
            return Decision(False, self.policy, 0, reset_at, max(1, math.ceil(left)))
        self._windows[key] = (start, count + 1)  # insertion order stays window-start order
        return Decision(True, self.policy, self.policy.limit - count - 1, reset_at, 0)

    def _expire(self, now: float) -> None:
        while self._windows:
            key, (start, _) = next(iter(self._windows.items()))
            if start + self.policy.window > now:
                return
            del self._windows[key]


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address, trusted: Iterable[IpNetwork]) -> bool:
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
        key = client_ip(request.remote, request.headers.getall("X-Forwarded-For", []), trusted)
        decision = limiter.hit(key)
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
