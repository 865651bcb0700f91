"""Every figure in docs/benchmarks.md, from one command.

    bash benchmarks/run.sh                        # setup (idempotent) + the default run below
    python -m benchmarks.run                      # 2x10^5 events, 3 runs per consumer, paced, matched, API
    python -m benchmarks.run --long               # 10^6 events, paced over 10^6, API up to 10^7 bindings
    python -m benchmarks.run --smoke              # CI: 2,000 events, 1 run, atmx + both transport ceilings

Consumers run one at a time, interleaved (run 1 of each, then run 2 of each...) so that noise
from other work on the machine spreads over all of them; the table reports medians. Results go
to `benchmarks/.cache/results-latest.json` (and a timestamped copy); `--chart` draws the PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from .consumers import CONSUMERS, run_consumer
from .corpus import CACHE, CorpusSpec, build
from .measure import median
from .pg import BenchPostgres


def machine() -> dict[str, Any]:
    model = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = 0
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) * 1024
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem / 2**30, 1),
        "python": platform.python_version(),
        "load_before": list(os.getloadavg()),
    }


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def throughput(args: argparse.Namespace, pg: BenchPostgres) -> dict[str, Any]:
    corpus = build(CorpusSpec(args.events, args.match_share), workers=args.workers)
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in args.consumers}
    for n in range(args.runs):
        for kind in args.consumers:
            full = kind in ("atmx", "ceiling", "ceiling-websockets")
            limit = corpus.count if full else min(corpus.count, args.peer_events or corpus.count)
            _log(f"fast run {n + 1}/{args.runs}: {kind} over {limit} events")
            result = await run_consumer(kind, corpus, limit=limit, pg=pg)
            _log(f"  {result['events_per_s']:.0f} events/s, {result['cpu_s_per_1e6']:.0f} CPU s/10^6")
            runs[kind].append(result)
    summary = {kind: _median_of(results) for kind, results in runs.items()}
    return {"corpus": corpus.meta["spec"], "corpus_counts": corpus.meta["counts"], "runs": runs, "median": summary}


def _median_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("events_per_s", "seconds", "cpu_s_per_1e6", "cpu_share", "peak_rss_mib", "rss_early_mib", "rss_late_mib")
    return {k: round(median([r[k] for r in results]), 2) for k in keys} | {"runs": len(results)}


async def matched(args: argparse.Namespace, pg: BenchPostgres) -> dict[str, Any]:
    """Matched commits verified and written per second: a corpus of nothing but matched writes."""
    corpus = build(CorpusSpec(args.matched_events, 1.0), workers=args.workers)
    results = []
    for n in range(args.runs):
        _log(f"matched run {n + 1}/{args.runs}: atmx over {corpus.count} matched events")
        r = await run_consumer("atmx", corpus, limit=corpus.count, pg=pg)
        r["matched_per_s"] = round(r["matched_events"] / r["seconds"], 1)
        _log(f"  {r['matched_per_s']:.0f} matched commits/s")
        results.append(r)
    return {"runs": results, "median_matched_per_s": median([r["matched_per_s"] for r in results])}


async def paced(args: argparse.Namespace, pg: BenchPostgres) -> dict[str, Any]:
    corpus = build(CorpusSpec(args.paced_corpus or args.events, args.match_share), workers=args.workers)
    limit = min(corpus.count, args.paced_events)
    _log(f"paced run: atmx at {args.rate:.0f} events/s over {limit} events")
    r = await run_consumer("atmx", corpus, limit=limit, pg=pg, rate=args.rate, wait_s=limit / args.rate * 3 + 120)
    _log(f"  lag p50 {r['lag_p50_s']}s p99 {r['lag_p99_s']}s over {r['lag_samples']} writes")
    return r


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "args": vars(args) | {"consumers": args.consumers}}
    results["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    async with BenchPostgres() as pg:
        if args.consumers:
            results["throughput"] = await throughput(args, pg)
            _save(args.out.with_suffix(".partial.json"), results)  # a later phase failing keeps these
        if args.matched_events:
            results["matched"] = await matched(args, pg)
            _save(args.out.with_suffix(".partial.json"), results)
        if args.paced_events:
            results["paced"] = await paced(args, pg)
            _save(args.out.with_suffix(".partial.json"), results)
        if args.api_sizes:
            from .api_bench import api_benchmark

            results["api"] = await api_benchmark(
                pg, sizes=args.api_sizes, seconds=args.api_seconds, concurrency=args.api_concurrency, pds=args.pds
            )
    results["machine"]["load_after"] = list(os.getloadavg())
    return results


def _save(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=200_000, help="corpus size for the fast runs")
    p.add_argument("--match-share", type=float, default=0.01)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--consumers", default=",".join(CONSUMERS), help="comma list of " + ", ".join(CONSUMERS))
    p.add_argument("--peer-events", type=int, default=None, help="cap the SDK/@atproto/sync runs to a prefix")
    p.add_argument("--matched-events", type=int, default=10_000, help="0 to skip the matched-only corpus")
    p.add_argument("--rate", type=float, default=2000.0, help="paced mode events/s")
    p.add_argument("--paced-events", type=int, default=60_000, help="0 to skip the paced run")
    p.add_argument("--paced-corpus", type=int, default=None, help="corpus size to take the paced prefix from")
    p.add_argument("--api-sizes", default="1e3,1e4,1e5,1e6", help="bindings in the index; empty to skip the API")
    p.add_argument("--api-seconds", type=float, default=5.0)
    p.add_argument("--api-concurrency", type=int, default=32)
    p.add_argument("--no-pds", dest="pds", action="store_false", help="skip the reference PDS getRecord baseline")
    p.add_argument("--workers", type=int, default=None, help="processes for building a corpus")
    p.add_argument("--out", type=Path, default=CACHE / "results-latest.json")
    p.add_argument("--chart", type=Path, default=None, help="write the throughput/lag PNG here")
    p.add_argument("--long", action="store_true", help="10^6 events; paced over 10^6; API to 10^7 bindings")
    p.add_argument("--smoke", action="store_true", help="tiny CI run: 2,000 events, atmx + ceilings, 1 run")
    args = p.parse_args(argv)
    if args.long:
        args.events, args.paced_events, args.paced_corpus = 1_000_000, 1_000_000, 1_000_000
        args.api_sizes = "1e3,1e4,1e5,1e6,1e7"
    if args.smoke:
        args.events, args.runs, args.consumers = 2_000, 1, "atmx,ceiling,ceiling-websockets"
        args.matched_events, args.paced_events, args.api_sizes, args.pds = 300, 2_000, "1e3", False
        args.api_seconds = 1.0
    args.consumers = [c for c in args.consumers.split(",") if c]
    unknown = set(args.consumers) - set(CONSUMERS)
    if unknown:
        p.error(f"unknown consumers: {', '.join(sorted(unknown))}")
    args.api_sizes = [int(float(x)) for x in args.api_sizes.split(",") if x]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = asyncio.run(main_async(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=1, default=str)
    args.out.write_text(text)
    (args.out.parent / f"results-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(text)
    from .report import chart, table

    print(table(results))
    if args.chart:
        chart(results, args.chart)
        _log(f"chart written to {args.chart}")
    _log(f"results in {args.out}")


if __name__ == "__main__":
    main()
