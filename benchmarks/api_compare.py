"""The API of the current atmx beside an earlier one, on the same seeded index, runs interleaved.

    eval "$(bash benchmarks/baseline.sh 660f9f4)"
    python -m benchmarks.api_compare --bindings 100000 --runs 3

Each version seeds its own fresh database with its own benchmarks/api_bench.py (its schema is its
own) and serves it with its own `atmx serve`; the load (benchmarks/httpload.py, keep-alive
connections on loopback) is the same for both. Prints one JSON line: medians per version and method.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from .api_bench import _wait_http, methods
from .consumers import BASELINE_PYTHON, _free_port
from .corpus import ROOT
from .httpload import run_load
from .measure import median
from .pg import BenchPostgres

SEED = "import asyncio, sys; from benchmarks.api_bench import seed; asyncio.run(seed(sys.argv[1], int(sys.argv[2])))"
METHODS = ("getIdentity", "resolveXmtpInbox")


@contextlib.asynccontextmanager
async def served(python: str, tree: Path, dsn: str, bindings: int) -> AsyncIterator[str]:
    """`bindings` seeded and served by the atmx installed for `python`, whose source is `tree`."""
    seed = await asyncio.create_subprocess_exec(python, "-c", SEED, dsn, str(bindings), cwd=tree)
    if await seed.wait() != 0:
        raise RuntimeError(f"seeding with {python} failed")
    port = _free_port()
    env = dict(os.environ, ATMX_DATABASE_URL=dsn, ATMX_LISTEN=f"127.0.0.1:{port}", ATMX_API_RATE_LIMIT="0")
    env["ATMX_LOG_LEVEL"] = "WARNING"
    proc = await asyncio.create_subprocess_exec(
        python, "-m", "atmx.indexer.cli", "serve", env=env, cwd=tree, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await _wait_http(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        await proc.wait()


async def compare(*, bindings: int, runs: int, seconds: float, concurrency: int) -> dict[str, Any]:
    if not BASELINE_PYTHON:
        raise SystemExit('set ATMX_BENCH_BASELINE_PYTHON first: eval "$(bash benchmarks/baseline.sh <commit>)"')
    versions = {"atmx": (sys.executable, ROOT), "atmx-baseline": (BASELINE_PYTHON, Path(BASELINE_PYTHON).parents[2])}
    paths = methods(bindings)
    got: dict[str, dict[str, list[dict[str, Any]]]] = {v: {m: [] for m in METHODS} for v in versions}
    async with BenchPostgres() as pg:
        for run in range(runs):
            for version, (python, tree) in versions.items():
                async with pg.database() as dsn, served(python, tree, dsn, bindings) as base:
                    for method in METHODS:
                        result = await run_load(base, paths[method], concurrency=concurrency, seconds=seconds)
                        got[version][method].append(result.summary())
                        print(f"[api-compare] run {run + 1} {version} {method}: {result.summary()}", file=sys.stderr)
    out: dict[str, Any] = {"bindings": bindings, "runs": runs, "seconds": seconds, "concurrency": concurrency}
    for version, by_method in got.items():
        out[version] = {
            method: {key: median([r[key] for r in rows]) for key in ("rps", "p50_ms", "p99_ms", "errors")}
            for method, rows in by_method.items()
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.api_compare")
    p.add_argument("--bindings", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=32)
    a = p.parse_args()
    result = asyncio.run(compare(bindings=a.bindings, runs=a.runs, seconds=a.seconds, concurrency=a.concurrency))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
