"""The cursor low-water mark: the highest seq at or below which every received event is processed.

Events finish out of order (different DIDs run concurrently), so the cursor may only move
past a seq once that event and every earlier one are done. Pure, no I/O.
"""

from __future__ import annotations

from collections import deque


class Watermark:
    def __init__(self, start: int | None = None) -> None:
        self._pending: deque[tuple[int, str | None]] = deque()
        self._done: set[int] = set()
        self.value: int | None = start
        self.value_time: str | None = None
        self.last_received: int | None = start

    def __len__(self) -> int:
        return len(self._pending)

    def received(self, seq: int, time: str | None) -> None:
        self._pending.append((seq, time))
        self.last_received = seq

    def done(self, seq: int) -> None:
        self._done.add(seq)
        pending, finished = self._pending, self._done
        while pending and pending[0][0] in finished:
            s, t = pending.popleft()
            finished.discard(s)
            self.value, self.value_time = s, t

    def value_if_done(self, seq: int) -> tuple[int | None, str | None]:
        """The mark as it would be once `seq` is done too (for the write that finishes it)."""
        value, value_time = self.value, self.value_time
        for s, t in self._pending:
            if s != seq and s not in self._done:
                break
            value, value_time = s, t
        return value, value_time

    def reset(self, start: int | None) -> None:
        """Forget everything in flight (after the upstream reset its sequence)."""
        self._pending.clear()
        self._done.clear()
        self.value = start
        self.last_received = start
