"""A lean closed-loop HTTP/1.1 load generator (keep-alive, asyncio streams).

`concurrency` connections each send a request, read the whole response, and send the next,
for `seconds`. Requests are pre-encoded and responses parsed only as far as framing needs
(Content-Length or chunked), so the client spends little CPU on a machine it shares with the
server; the same client drives atmx and the reference PDS, so their ratio is fair.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from .measure import percentile


@dataclass
class LoadResult:
    requests: int
    seconds: float
    statuses: dict[int, int]
    errors: int
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, float | int]:
        return {
            "rps": round(self.rps, 1),
            "p50_ms": round(percentile(self.latencies_ms, 50), 2),
            "p99_ms": round(percentile(self.latencies_ms, 99), 2),
            "requests": self.requests,
            "errors": self.errors + sum(n for s, n in self.statuses.items() if s >= 500),
        }


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    i = lower.find(b"content-length:")
    if i >= 0:
        n = int(lower[i + 15 : lower.index(b"\r\n", i)])
        await reader.readexactly(n)
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def run_load(
    base: str,
    paths: Callable[[random.Random], str] | Sequence[str],
    *,
    concurrency: int,
    seconds: float,
    warmup: float = 0.5,
    seed: int = 1,
) -> LoadResult:
    url = urlsplit(base)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    pick: Callable[[random.Random], str] = paths if callable(paths) else (lambda rng: rng.choice(paths))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    t_start = time.perf_counter() + warmup
    t_end = t_start + seconds

    async def worker(n: int) -> None:
        nonlocal errors
        rng = random.Random(seed * 7919 + n)
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                path = pick(rng)
                req = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: application/json\r\n\r\n".encode()
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                try:
                    writer.write(req)
                    status = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                t1 = time.perf_counter()
                if t0 >= t_start:
                    latencies.append((t1 - t0) * 1000)
                    statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return LoadResult(len(latencies), seconds, statuses, errors, latencies)
