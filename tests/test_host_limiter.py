"""Per-host pacing and the server's rate-limit headers."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from atmx.indexer.backfill.host_limiter import (
    MAX_PAUSE,
    HostLimiter,
    parse_policy,
    parse_reset,
    parse_retry_after,
    server_pause,
)

NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_retry_after_forms() -> None:
    assert parse_retry_after("7", NOW) == 7.0
    assert parse_retry_after(formatdate(NOW + 30, usegmt=True), NOW) == pytest.approx(30.0, abs=1)
    assert parse_retry_after(formatdate(NOW - 30, usegmt=True), NOW) == 0.0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None
    assert parse_retry_after("999999", NOW) == MAX_PAUSE


def test_reset_is_epoch_or_delta() -> None:
    assert parse_reset(str(int(NOW) + 12), NOW) == 12.0  # the atproto PDS sends unix seconds
    assert parse_reset("12", NOW) == 12.0  # the IETF draft sends a delta
    assert parse_reset("x", NOW) is None


def test_policy() -> None:
    assert parse_policy("3000;w=300") == 10.0
    assert parse_policy("100;w=0") is None
    assert parse_policy("bogus") is None


def test_server_pause() -> None:
    assert server_pause(429, {"Retry-After": "3"}, NOW) == 3.0
    assert server_pause(429, {"RateLimit-Reset": str(int(NOW) + 4)}, NOW) == 4.0
    assert server_pause(429, {}, NOW) == 1.0  # no hint: still back off
    assert server_pause(200, {"RateLimit-Remaining": "0", "RateLimit-Reset": "5"}, NOW) == 5.0
    assert server_pause(200, {"RateLimit-Remaining": "9", "RateLimit-Reset": "5"}, NOW) is None
    assert server_pause(503, {}, NOW) is None


def test_token_bucket_per_host() -> None:
    clock = Clock()
    lim = HostLimiter(rate=2.0, burst=2, clock=clock, wall=lambda: NOW)
    assert [lim.reserve("a") for _ in range(4)] == [0.0, 0.0, 0.5, 1.0]
    assert lim.reserve("b") == 0.0  # another host has its own bucket
    clock.t += 10
    assert lim.reserve("a") == 0.0  # refilled


def test_retry_after_blocks_only_that_host() -> None:
    clock = Clock()
    lim = HostLimiter(rate=100.0, burst=10, clock=clock, wall=lambda: NOW)
    assert lim.observe("a", 429, {"Retry-After": "5"}) == 5.0
    assert lim.reserve("a") == 5.0
    assert lim.reserve("b") == 0.0
    clock.t += 5
    assert lim.blocked_for("a") == 0.0
    assert lim.paused_seconds == 5.0


def test_stricter_policy_lowers_the_rate() -> None:
    clock = Clock()
    lim = HostLimiter(rate=100.0, burst=1, clock=clock, wall=lambda: NOW)
    lim.observe("a", 200, {"RateLimit-Policy": "10;w=10"})
    lim.reserve("a")
    assert lim.reserve("a") == pytest.approx(1.0)


async def test_acquire_waits_in_real_time() -> None:
    lim = HostLimiter(rate=20.0, burst=1)
    t0 = time.monotonic()
    for _ in range(5):
        await lim.acquire("h")
    assert time.monotonic() - t0 >= 0.19
    lim.observe("h", 429, {"Retry-After": "1"})
    t0 = time.monotonic()
    waited = await lim.acquire("h")
    assert waited >= 0.95 and time.monotonic() - t0 >= 0.95


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        HostLimiter(rate=0)
