"""Whether the indexer is live, idle, lagging or disconnected, reported every few seconds.

The state is the indexer's to judge: only it knows whether it is connected and caught up.
It is exported as metrics and written to the database (store/liveness.py) for API processes.

- `disconnected`: no firehose connection (a resubscribe shorter than a few seconds does not count)
- `lagging`: events wait longer than LAGGING_AFTER to be processed (index/lag.py)
- `idle`: connected, caught up, and no event for `idle_after` seconds: a quiet network (lag 0)
- `live`: connected, caught up, events arriving
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

import asyncpg

from atmx.indexer import metrics
from atmx.indexer.store.errors import TRANSIENT_DB_ERRORS
from atmx.indexer.store.liveness import STATES, Report, save_report

log = logging.getLogger(__name__)

LAGGING_AFTER = 60.0  # seconds of lag before the state is `lagging`
REPORT_SECONDS = 2.0


class Stream(Protocol):
    last_event_at: float | None

    def is_connected(self, now: float) -> bool: ...


class Intake(Protocol):
    def lag_seconds(self) -> float: ...
    def in_flight(self) -> int: ...


def firehose_state(*, connected: bool, lag: float, idle: float | None, in_flight: int, idle_after: float) -> str:
    if not connected:
        return "disconnected"
    if lag > LAGGING_AFTER:
        return "lagging"
    if in_flight == 0 and (idle is None or idle >= idle_after):
        return "idle"
    return "live"


def _level(before: str | None, after: str) -> int:
    """Falling behind warns; losing or regaining the connection, or catching up, is news; a
    quiet network going idle and live again is not."""
    if after == "lagging":
        return logging.WARNING
    if after == "disconnected" or before in ("disconnected", "lagging"):
        return logging.INFO if before is not None else logging.DEBUG
    return logging.DEBUG


class Liveness:
    def __init__(
        self,
        stream: Stream,
        intake: Intake,
        *,
        idle_after: float,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.stream = stream
        self.intake = intake
        self.idle_after = idle_after
        self.clock = clock or asyncio.get_running_loop().time  # the stream's clock
        self.state: str | None = None

    def sample(self) -> Report:
        now = self.clock()
        connected = self.stream.is_connected(now)
        last = self.stream.last_event_at
        idle = None if last is None else max(0.0, now - last)
        lag = self.intake.lag_seconds()
        in_flight = self.intake.in_flight()
        if in_flight == 0 and idle is not None and idle >= self.idle_after:
            lag = 0.0  # nothing waits and nothing has come for a while: no backlog is being replayed
        state = firehose_state(connected=connected, lag=lag, idle=idle, in_flight=in_flight, idle_after=self.idle_after)
        return Report(state=state, connected=connected, lag_seconds=lag, idle_seconds=idle)

    def publish(self, report: Report) -> None:
        metrics.LAG.set(report.lag_seconds)
        metrics.IDLE.set(report.idle_seconds or 0.0)
        for state in STATES:
            metrics.STATE.labels(state).set(1 if state == report.state else 0)
        if report.state != self.state:
            log.log(_level(self.state, report.state), "firehose %s (lag %.1fs)", report.state, report.lag_seconds)
            self.state = report.state

    async def run(self, pool: asyncpg.Pool, upstream: str, interval: float = REPORT_SECONDS) -> None:
        """Publish and save a report every `interval` seconds until cancelled."""
        failed = False
        while True:
            report = self.sample()
            self.publish(report)
            try:
                await save_report(pool, upstream, report)
            except TRANSIENT_DB_ERRORS as exc:  # the writer counts and logs the outage itself
                log.debug("cannot save the firehose report: %s", exc)
            except Exception as exc:  # a report must never stop indexing
                if not failed:
                    log.warning("cannot save the firehose report (retrying quietly): %s: %s", type(exc).__name__, exc)
                failed = True
            else:
                failed = False
            await asyncio.sleep(interval)
