"""Firehose lag: the delay of events received (or replayed by the upstream) but not yet processed.

Not the age of the last event: on a quiet network that grows for ever while nothing is late.
When nothing is in flight, the lag is how late the cursor's event was when the cursor reached
it: a relay replaying a backlog makes that large, a caught-up stream keeps it near 0, and it
stays put while nothing arrives. While events are in flight it is also how long the oldest of
them can have waited, which grows while processing is stuck (a database outage).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from atmx.indexer.index.writer import parse_time


class Lag:
    def __init__(self, cursor: int | None, clock: Callable[[], datetime]) -> None:
        self.clock = clock
        self._seq = cursor
        self._cursor_delay = 0.0  # how late the cursor's event was when the cursor reached it
        self._caught_up = clock()  # the last time nothing was in flight

    def observe(self, cursor: int | None, cursor_time: str | None, in_flight: int) -> float:
        """Seconds of lag now, given the cursor, its event's time and the events in flight."""
        now = self.clock()
        event_time = parse_time(cursor_time)
        if cursor != self._seq:  # the cursor moved since the last look
            self._seq = cursor
            if event_time is not None:
                self._cursor_delay = max(0.0, (now - event_time).total_seconds())
        if in_flight == 0:
            self._caught_up = now
            return self._cursor_delay
        # every event in flight arrived after the cursor's event and after the last moment
        # nothing was in flight
        since = max(self._caught_up, event_time) if event_time is not None else self._caught_up
        return max(self._cursor_delay, (now - since).total_seconds())
