"""The cursor low-water mark: the highest seq at or below which every received event is processed.

Events finish out of order (different DIDs run concurrently), so the cursor may only move
past a seq once that event and every earlier one are done. Pure, no I/O.

Most firehose events concern nothing atmx indexes and are done the moment they arrive
(`skip`). They are not queued one by one: each pending entry carries the last skipped seq
that arrived after it, so memory grows with the events in flight, not with the stream.
"""

from __future__ import annotations

from collections import deque


class _Entry:
    __slots__ = ("after", "after_time", "seq", "time")

    def __init__(self, seq: int, time: str | None) -> None:
        self.seq = seq
        self.time = time
        self.after: int | None = None  # the last event skipped after this one
        self.after_time: str | None = None

    def mark(self) -> tuple[int, str | None]:
        """The cursor value once this entry and everything before it are done."""
        return (self.seq, self.time) if self.after is None else (self.after, self.after_time)


class Watermark:
    __slots__ = ("_done", "_pending", "last_received", "value", "value_time")

    def __init__(self, start: int | None = None) -> None:
        self._pending: deque[_Entry] = deque()
        self._done: set[int] = set()
        self.value: int | None = start
        self.value_time: str | None = None
        self.last_received: int | None = start

    def __len__(self) -> int:
        """Events received and not done yet (skipped events never count)."""
        return len(self._pending) - len(self._done)

    def received(self, seq: int, time: str | None) -> None:
        self._pending.append(_Entry(seq, time))
        self.last_received = seq

    def skip(self, seq: int, time: str | None) -> None:
        """An event received and done at once."""
        self.last_received = seq
        if self._pending:
            tail = self._pending[-1]
            tail.after = seq
            tail.after_time = time
        else:
            self.value = seq
            self.value_time = time

    def done(self, seq: int) -> None:
        pending, finished = self._pending, self._done
        finished.add(seq)
        while pending and pending[0].seq in finished:
            entry = pending.popleft()
            finished.discard(entry.seq)
            self.value, self.value_time = entry.mark()

    def value_if_done(self, seq: int) -> tuple[int | None, str | None]:
        """The mark as it would be once `seq` is done too."""
        value, value_time = self.value, self.value_time
        for entry in self._pending:
            if entry.seq != seq and entry.seq not in self._done:
                break
            value, value_time = entry.mark()
        return value, value_time

    def reset(self, start: int | None) -> None:
        """Forget everything in flight (after the upstream reset its sequence)."""
        self._pending.clear()
        self._done.clear()
        self.value = start
        self.value_time = None
        self.last_received = start
