"""indexer/liveness.py: the firehose state rule and the samples the indexer reports."""

from __future__ import annotations

from atmx.indexer.liveness import LAGGING_AFTER, Liveness, firehose_state
from atmx.indexer.store.liveness import Report


def test_the_state_rule() -> None:
    state = {"lag": 0.0, "idle": 5.0, "in_flight": 0, "idle_after": 2.0}
    assert firehose_state(connected=True, **state) == "idle"  # type: ignore[arg-type]
    assert firehose_state(connected=True, **{**state, "idle": 0.5}) == "live"  # type: ignore[arg-type]
    assert firehose_state(connected=True, **{**state, "in_flight": 3}) == "live"  # type: ignore[arg-type]
    assert firehose_state(connected=True, **{**state, "idle": None}) == "idle"  # type: ignore[arg-type]
    assert firehose_state(connected=True, **{**state, "lag": LAGGING_AFTER + 1}) == "lagging"  # type: ignore[arg-type]
    assert firehose_state(connected=False, **state) == "disconnected"  # type: ignore[arg-type]


class FakeStream:
    def __init__(self) -> None:
        self.last_event_at: float | None = None
        self.connected = True

    def is_connected(self, now: float) -> bool:
        return self.connected


class FakeIntake:
    def __init__(self) -> None:
        self.lag = 0.7
        self.pending = 0

    def lag_seconds(self) -> float:
        return self.lag

    def in_flight(self) -> int:
        return self.pending


def test_liveness_samples_state_lag_and_idle_time() -> None:
    now = [100.0]
    stream, intake = FakeStream(), FakeIntake()
    live = Liveness(stream, intake, idle_after=10.0, clock=lambda: now[0])
    assert live.sample() == Report("idle", True, 0.7, None)  # connected, nothing received yet
    stream.last_event_at = 99.0
    assert live.sample() == Report("live", True, 0.7, 1.0)
    now[0] = 130.0  # 31 s without an event, nothing in flight: idle, and no backlog can be waiting
    assert live.sample() == Report("idle", True, 0.0, 31.0)
    intake.pending, intake.lag = 4, 75.0  # events stuck in flight for over a minute
    assert live.sample() == Report("lagging", True, 75.0, 31.0)
    stream.connected = False
    assert live.sample().state == "disconnected"
