"""Process sampling (CPU seconds, RSS over time) and small statistics helpers."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import psutil


@dataclass
class Monitor:
    """Samples a process's RSS every `interval` s; CPU seconds are read on demand (user + system)."""

    pid: int
    interval: float = 0.1
    samples: list[tuple[float, int]] = field(default_factory=list)  # (wall time, rss bytes)

    def __post_init__(self) -> None:
        self.proc = psutil.Process(self.pid)

    def cpu(self) -> float:
        try:
            t = self.proc.cpu_times()
            return float(t.user + t.system + t.children_user + t.children_system)
        except psutil.Error:
            return float("nan")

    def peak_rss(self) -> int:
        """VmHWM (the kernel's high-water mark) or the largest sample, whichever is larger."""
        hwm = 0
        try:
            for line in open(f"/proc/{self.pid}/status"):
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
        except OSError:
            pass
        return max([hwm, *(rss for _, rss in self.samples)])

    async def run(self) -> None:
        while True:
            try:
                self.samples.append((time.time(), self.proc.memory_info().rss))
            except psutil.Error:
                return
            await asyncio.sleep(self.interval)

    def rss_between(self, start: float, end: float, lo: float, hi: float) -> float:
        """Mean RSS (MiB) over the fraction [lo, hi] of the window [start, end]."""
        a, b = start + (end - start) * lo, start + (end - start) * hi
        values = [rss for t, rss in self.samples if a <= t <= b]
        return statistics.fmean(values) / 2**20 if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if v == v]  # drop NaN
    return statistics.median(clean) if clean else float("nan")
