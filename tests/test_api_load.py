"""benchmarks/api_load.py as a smoke test: sustained load with no errors and no large RSS growth.

Timing figures come from running the benchmark itself; this only checks correctness under load.
"""

from __future__ import annotations

import os

from benchmark_modules import load_benchmark

LONG = os.environ.get("ATMX_LONG") == "1"
MAX_RSS_GROWTH_MIB = 30.0


async def test_api_holds_sustained_load_without_errors_or_memory_growth(db_dsn: str) -> None:
    bench = load_benchmark()
    seconds = bench.LONG_SECONDS if LONG else bench.SMOKE_SECONDS
    report = await bench.benchmark(db_dsn, seconds=seconds, concurrency=32, accounts=1000)
    print(report)
    assert report.requests > 100, report
    assert report.errors == 0, report.error_kinds
    assert report.rss_end_mib - report.rss_start_mib < MAX_RSS_GROWTH_MIB, report
