"""Progress of a long job: a one-line bar on a terminal, periodic log lines otherwise, a summary."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TextIO

RATE_WINDOW = 10.0  # seconds of history behind the shown rate and ETA
TTY_INTERVAL = 0.2
LOG_INTERVAL = 10.0


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--"
    s = int(seconds + 0.5)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def format_line(done: int, total: int, errors: int, rate: float, eta: float | None, width: int = 28) -> str:
    frac = min(1.0, done / total) if total else 0.0
    filled = int(frac * width)
    bar = "#" * filled + "-" * (width - filled)
    return (
        f"[{bar}] {done}/{total} repos {frac * 100:5.1f}%  {rate:7.1f}/s  errors {errors}  ETA {format_duration(eta)}"
    )


class Progress:
    """Counts done/total/errors; draws itself at most every `interval` seconds."""

    def __init__(
        self,
        stream: TextIO | None,
        *,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.tty = (stream is not None and stream.isatty()) if tty is None else tty
        self.clock = clock
        self.done = 0
        self.total = 0
        self.errors = 0
        self.started = clock()
        self._history: deque[tuple[float, int]] = deque([(self.started, 0)])
        self._done_at_start = 0
        self._drawn = float("-inf")

    def start(self, done: int, total: int) -> None:
        self.done, self.total, self._done_at_start = done, total, done
        self._history = deque([(self.clock(), done)])

    def rate(self) -> float:
        now = self.clock()
        while len(self._history) > 1 and now - self._history[0][0] > RATE_WINDOW:
            self._history.popleft()
        t0, d0 = self._history[0]
        return (self.done - d0) / (now - t0) if now > t0 else 0.0

    def eta(self) -> float | None:
        rate = self.rate()
        remaining = max(0, self.total - self.done)
        if remaining == 0:
            return 0.0
        return remaining / rate if rate > 0 else None

    def add_total(self, n: int) -> None:
        self.total += n
        self.draw()

    def advance(self, ok: bool = True) -> None:
        self.done += 1
        if not ok:
            self.errors += 1
        self._history.append((self.clock(), self.done))
        self.draw()

    def draw(self, force: bool = False) -> None:
        if self.stream is None:
            return
        now = self.clock()
        interval = TTY_INTERVAL if self.tty else LOG_INTERVAL
        if not force and now - self._drawn < interval:
            return
        self._drawn = now
        line = format_line(self.done, self.total, self.errors, self.rate(), self.eta())
        if self.tty:
            self.stream.write("\r" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        """Draw the last state, if this run drew anything: a run that failed before doing any
        work must not show an earlier run's figures as if they were its own."""
        if self._drawn == float("-inf"):
            return
        self.draw(force=True)
        if self.stream is not None and self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def summary(
        self,
        outcomes: Mapping[str, int],
        *,
        failed: Mapping[str, int] | None = None,
        skipped: Mapping[str, int] | None = None,
    ) -> str:
        """One line: this run's repos (failed and skipped by reason, when given) and overall progress."""
        elapsed = self.clock() - self.started
        this_run = self.done - self._done_at_start
        rate = this_run / elapsed if elapsed > 0 else 0.0
        head = f"backfill: {self.done}/{self.total} repos done ({this_run} this run) in {format_duration(elapsed)}, "
        if failed is None and skipped is None:
            parts = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
            return head + f"{rate:.1f} repos/s, errors {self.errors}" + (f"; {parts}" if parts else "")
        text = (
            f"backfill: {this_run} repos in {format_duration(elapsed)} ({rate:.1f}/s; {self.done}/{self.total} "
            f"candidates over all runs): {outcomes.get('ok', 0)} ok"
        )
        for name, by_reason in (("failed", failed or {}), ("skipped", skipped or {})):
            if by_reason:
                reasons = ", ".join(f"{k} {v}" for k, v in sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0])))
                text += f", {sum(by_reason.values())} {name} ({reasons})"
        if failed:
            text += "; run again to retry the failed repos"
        return text
