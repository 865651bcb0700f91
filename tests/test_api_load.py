"""benchmarks/api_load.py as a smoke test: sustained load with no errors and no large RSS growth.

Timing figures come from running the benchmark itself; this only checks correctness under load.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

LONG = os.environ.get("ATMX_LONG") == "1"
MAX_RSS_GROWTH_MIB = 30.0


def load_benchmark() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "api_load.py"
    spec = importlib.util.spec_from_file_location("api_load", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["api_load"] = module
    spec.loader.exec_module(module)
    return module


async def test_api_holds_sustained_load_without_errors_or_memory_growth(db_dsn: str) -> None:
    bench = load_benchmark()
    seconds = bench.LONG_SECONDS if LONG else bench.SMOKE_SECONDS
    report = await bench.benchmark(db_dsn, seconds=seconds, concurrency=32, accounts=1000)
    print(report)
    assert report.requests > 100, report
    assert report.errors == 0, report.error_kinds
    assert report.rss_end_mib - report.rss_start_mib < MAX_RSS_GROWTH_MIB, report
