"""An XMTP environment that cannot be reached is one outage, not one log line per inbox per retry:
logged once when it starts (with the first DID it held up), summarised while it lasts, and once
when it ends (how long, how many checks waited)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["OutageLog"]

SUMMARY_EVERY: Final = 300.0  # seconds between "still unreachable" lines


@dataclass(slots=True)
class _Outage:
    started: float
    last_summary: float
    deferred: int


class OutageLog:
    def __init__(self, log: logging.Logger, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.clock = clock
        self._open: dict[str, _Outage] = {}

    def failed(self, env: str, did: str, why: str) -> None:
        now = self.clock()
        outage = self._open.get(env)
        if outage is None:
            self._open[env] = _Outage(now, now, 1)
            self.log.warning("XMTP %s unreachable (%s), first while checking %s; checks are retried", env, why, did)
            return
        outage.deferred += 1
        if now - outage.last_summary >= SUMMARY_EVERY:
            outage.last_summary = now
            self.log.warning(
                "XMTP %s still unreachable after %.0fs (%s); %d checks deferred",
                env,
                now - outage.started,
                why,
                outage.deferred,
            )

    def answered(self, env: str) -> None:
        outage = self._open.pop(env, None)
        if outage is not None:
            self.log.info(
                "XMTP %s reachable again after %.0fs; %d checks were deferred",
                env,
                self.clock() - outage.started,
                outage.deferred,
            )

    def is_down(self, env: str) -> bool:
        return env in self._open
