"""Per-host request pacing: a token bucket per host that also obeys what the server says.

A `429`/`503` with `Retry-After`, or `RateLimit-Remaining: 0` with `RateLimit-Reset`, blocks
that host (and only that host) until the given time. A `RateLimit-Policy` such as
`3000;w=300` lowers our rate for the host when it is stricter than the configured one.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

MAX_PAUSE = 3600.0  # never trust a server to park us for longer than an hour
_EPOCH_THRESHOLD = 1_000_000_000  # RateLimit-Reset above this is a unix time, below it a delta
_POLICY_RE = re.compile(r"^\s*(\d+)\s*;\s*w\s*=\s*(\d+)")


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """Seconds to wait from a Retry-After value (delta seconds or an HTTP date); None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_PAUSE)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return min(max(0.0, when.timestamp() - now_wall), MAX_PAUSE)


def parse_reset(value: str | None, now_wall: float) -> float | None:
    """Seconds until a RateLimit-Reset (unix time as the atproto PDS sends it, or a delta)."""
    if value is None:
        return None
    try:
        reset = float(value.strip())
    except ValueError:
        return None
    delta = reset - now_wall if reset > _EPOCH_THRESHOLD else reset
    return min(max(0.0, delta), MAX_PAUSE)


def parse_policy(value: str | None) -> float | None:
    """Requests per second from a `RateLimit-Policy: <limit>;w=<window>` header."""
    if value is None:
        return None
    m = _POLICY_RE.match(value)
    if m is None or int(m.group(2)) == 0:
        return None
    return int(m.group(1)) / int(m.group(2))


def server_pause(status: int, headers: Mapping[str, str], now_wall: float) -> float | None:
    """How long the server asked us to stay away, or None."""
    if status in (429, 503):
        pause = parse_retry_after(headers.get("Retry-After"), now_wall)
        if pause is None:
            pause = parse_reset(headers.get("RateLimit-Reset"), now_wall)
        return pause if pause is not None else (1.0 if status == 429 else None)
    remaining = headers.get("RateLimit-Remaining")
    if remaining is not None and remaining.strip() == "0":
        return parse_reset(headers.get("RateLimit-Reset"), now_wall)
    return None


@dataclass(slots=True)
class _Bucket:
    rate: float
    tokens: float
    updated: float
    blocked_until: float = 0.0


class HostLimiter:
    """Token bucket per host: `rate` requests/s on average, bursts of up to `burst`."""

    def __init__(
        self,
        rate: float,
        burst: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._wall = wall
        self._buckets: dict[str, _Bucket] = {}
        self.paused_seconds = 0.0  # total server-requested pause applied, for metrics and tests

    def _bucket(self, host: str) -> _Bucket:
        b = self._buckets.get(host)
        if b is None:
            b = self._buckets[host] = _Bucket(self.rate, self.burst, self._clock())
        return b

    def reserve(self, host: str) -> float:
        """Take one token for `host`; seconds the caller must wait before sending."""
        b = self._bucket(host)
        now = self._clock()
        b.tokens = min(self.burst, b.tokens + (now - b.updated) * b.rate)
        b.updated = now
        b.tokens -= 1.0
        wait = 0.0 if b.tokens >= 0 else -b.tokens / b.rate
        return max(wait, b.blocked_until - now)

    def blocked_for(self, host: str) -> float:
        b = self._buckets.get(host)
        return 0.0 if b is None else max(0.0, b.blocked_until - self._clock())

    async def acquire(self, host: str) -> float:
        """Wait until a request to `host` may go out; returns the seconds waited."""
        waited = 0.0
        wait = self.reserve(host)
        while wait > 0:
            await asyncio.sleep(wait)
            waited += wait
            # a 429 may have arrived for this host while we slept
            wait = self.blocked_for(host)
        return waited

    def observe(self, host: str, status: int, headers: Mapping[str, str]) -> float | None:
        """Learn from a response; returns the pause imposed on the host, if any."""
        b = self._bucket(host)
        policy = parse_policy(headers.get("RateLimit-Policy"))
        if policy is not None and policy < b.rate:
            b.rate = policy
        pause = server_pause(status, headers, self._wall())
        if pause is None:
            return None
        until = self._clock() + pause
        if until > b.blocked_until:
            self.paused_seconds += until - max(b.blocked_until, self._clock())
            b.blocked_until = until
        return pause
