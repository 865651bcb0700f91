"""Was a silent firehose connection idle, or stalled? (pure)

A relay of the live network is never silent for a minute, so silence resubscribes from the
cursor (stream.py). On a quiet network that is routine: nothing older than the moment we gave
up arrives afterwards. If the resubscribed stream starts with events from before that moment,
the silent connection had been holding them back: a real stall, worth a warning.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

# An event from the last seconds before we gave up may just have been in transit.
IN_TRANSIT = 10.0


class SilenceProbe:
    def __init__(self, stall_timeout: float) -> None:
        self.margin = timedelta(seconds=min(stall_timeout / 2, IN_TRANSIT))
        self.gave_up: datetime | None = None  # wall time of the first resubscribe for silence

    @property
    def armed(self) -> bool:
        return self.gave_up is not None

    def arm(self) -> None:
        if self.gave_up is None:  # a quiet spell of several resubscribes counts from its start
            self.gave_up = datetime.now(UTC)

    def held_back(self, event_time: object) -> bool:
        """Whether the first event after resubscribing predates giving up; disarms the probe."""
        gave_up, self.gave_up = self.gave_up, None
        if gave_up is None or not isinstance(event_time, str):
            return False
        try:
            when = datetime.fromisoformat(event_time.replace("Z", "+00:00"))
        except ValueError:
            return False
        return when.tzinfo is not None and when < gave_up - self.margin
