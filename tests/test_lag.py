"""index/lag.py: lag is the delay of events not yet processed, so a quiet network is not behind."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from atmx.indexer.index.lag import Lag


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def iso(self, seconds_ago: float) -> str:
        return (self.now - timedelta(seconds=seconds_ago)).isoformat().replace("+00:00", "Z")


def test_a_caught_up_stream_keeps_lag_0_however_long_it_is_quiet() -> None:
    clock = Clock()
    lag = Lag(None, clock)
    assert lag.observe(1, clock.iso(0.2), 0) == pytest.approx(0.2)
    clock.now += timedelta(hours=3)  # nothing arrives for hours
    assert lag.observe(1, clock.iso(3 * 3600 + 0.2), 0) == pytest.approx(0.2)


def test_a_replayed_backlog_lags_by_the_age_of_its_events() -> None:
    clock = Clock()
    lag = Lag(None, clock)
    assert lag.observe(5, clock.iso(600), 0) == pytest.approx(600)  # the relay replays 10-minute-old events
    clock.now += timedelta(seconds=1)
    assert lag.observe(9, clock.iso(300), 0) == pytest.approx(300)  # catching up


def test_events_stuck_in_flight_lag_by_how_long_they_wait() -> None:
    clock = Clock()
    lag = Lag(None, clock)
    assert lag.observe(1, clock.iso(0.1), 0) == pytest.approx(0.1)
    clock.now += timedelta(hours=1)  # quiet (liveness looks every few seconds), then an event arrives
    assert lag.observe(1, clock.iso(3600.1), 0) == pytest.approx(0.1)
    clock.now += timedelta(seconds=0.5)
    assert lag.observe(1, clock.iso(3600.6), 1) < 1  # it has not waited yet, whatever the cursor's age
    clock.now += timedelta(seconds=90)
    assert lag.observe(1, clock.iso(3690.6), 1) == pytest.approx(90.5)  # the database is down: it grows
