"""Benchmarks of following the directory: replaying the change log, serving proofs, and fanning
live changes out to many consumers while atmx indexes.

    python -m benchmarks.stream_bench replay --changes 1000000      # a new consumer replays the log
    python -m benchmarks.stream_bench proofs --bindings 1000000     # getBindingProof latency
    python -m benchmarks.stream_bench fanout --consumers 1000 --rate 2000 --events 60000

Every figure comes from real processes on loopback: `atmx serve` / `atmx run` against a fresh
embedded PostgreSQL, consumers in their own process (benchmarks/stream_consumers.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import datetime
from typing import Any

import asyncpg

from .api_bench import atmx_api
from .api_bench import seed as seed_bindings
from .consumers import atmx_env, replay_server
from .corpus import ROOT, CorpusSpec, build
from .httpload import run_load
from .measure import Monitor, median, percentile
from .pg import BenchPostgres

NS = "/xrpc/directory.atmx."


def _log(msg: str) -> None:
    print(f"[stream-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- replay ---------------------------------------------------------------------------------


async def seed_changes(dsn: str, count: int) -> None:
    """`count` #binding changes, shaped as the indexer writes them (an XMTP projection each)."""
    from atmx.indexer.store.database import apply_schema, create_pool

    pool = await create_pool(dsn, max_size=2)
    try:
        await apply_schema(pool)
        await pool.execute(
            """INSERT INTO changes (seq, did, kind, protocol, body)
               SELECT nextval('change_seq'), d, 'binding', 'xmtp', jsonb_build_object(
                   'did', d, 'protocol', 'xmtp', 'uri', 'at://' || d || '/org.xmtp.inbox/self',
                   'cid', 'bafyreib' || lpad(i::text, 51, 'a'), 'rev', '3lbenchrev222', 'action', 'create',
                   'status', 'pending', 'binding', jsonb_build_object(
                       'inboxId', lpad(to_hex(i), 64, '0'), 'verificationSignature', repeat('A', 86) || '==',
                       'status', 'pending', 'uri', 'at://' || d || '/org.xmtp.inbox/self',
                       'cid', 'bafyreib' || lpad(i::text, 51, 'a'), 'createdAt', '2026-01-02T03:04:05.678Z',
                       'indexedAt', '2026-01-02T03:04:05.678Z'))
               FROM (SELECT i, 'did:plc:bench' || lpad(i::text, 19, '0') AS d FROM generate_series(1, $1) AS i) s""",
            count,
            timeout=3600,
        )
        await pool.execute("ANALYZE changes", timeout=3600)
    finally:
        await pool.close()


async def replay(pg: BenchPostgres, *, changes: int, runs: int, json_framing: bool) -> dict[str, Any]:
    async with pg.database() as dsn:
        t0 = time.perf_counter()
        await seed_changes(dsn, changes)
        _log(f"replay: {changes:,} changes seeded in {time.perf_counter() - t0:.0f}s")
        async with atmx_api(dsn) as base:
            rates = []
            for _ in range(runs):
                out = await _consumers(base, 1, cursor=0, until=changes, json_framing=json_framing)
                rates.append(changes / out["seconds"])
                _log(f"replay: {changes:,} changes in {out['seconds']:.1f}s = {rates[-1]:,.0f}/s")
    return {"changes": changes, "json": json_framing, "runs": [round(r) for r in rates], "median": round(median(rates))}


async def _consumers(
    base: str, count: int, *, cursor: int | None, until: int | None, json_framing: bool = False, seconds: float = 0
) -> dict[str, Any]:
    args = [sys.executable, "-m", "benchmarks.stream_consumers", base.replace("http", "ws", 1), str(count)]
    if cursor is not None:
        args += ["--cursor", str(cursor)]
    if until is not None:
        args += ["--until", str(until)]
    if json_framing:
        args.append("--json")
    if seconds:
        args += ["--seconds", str(seconds)]
    proc = await asyncio.create_subprocess_exec(*args, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"stream consumers exited with {proc.returncode}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


# --- proofs ---------------------------------------------------------------------------------


async def proofs(pg: BenchPostgres, *, bindings: int, seconds: float, concurrency: int) -> dict[str, Any]:
    from .api_bench import did_of

    async with pg.database() as dsn:
        t0 = time.perf_counter()
        await seed_bindings(dsn, bindings)
        conn = await asyncpg.connect(dsn)
        try:
            # a proof of realistic size per binding: commit (~200 B), 4 MST nodes (~1 KB each), record
            await conn.execute(
                """INSERT INTO binding_proofs (uri, rev, car, signing_key, pds)
                   SELECT uri, rev, decode(repeat('ab', 2400), 'hex'), 'did:key:zQ3shbench', 'https://pds.bench'
                   FROM bindings""",
                timeout=3600,
            )
            await conn.execute("ANALYZE binding_proofs", timeout=3600)
        finally:
            await conn.close()
        _log(f"proofs: {bindings:,} bindings and proofs seeded in {time.perf_counter() - t0:.0f}s")
        async with atmx_api(dsn) as base:

            def path(rng: Any) -> str:
                return f"{NS}getBindingProof?uri=at://{did_of(rng.randrange(bindings))}/org.xmtp.inbox/self"

            result = await run_load(base, path, concurrency=concurrency, seconds=seconds)
    return {"bindings": bindings, "concurrency": concurrency} | result.summary()


# --- live fan-out ---------------------------------------------------------------------------


async def fanout(
    pg: BenchPostgres,
    *,
    consumers: int,
    rate: float,
    events: int,
    match_share: float,
    host_rate: float,
    split: bool = False,
) -> dict[str, Any]:
    """`atmx run` indexing a paced corpus while `consumers` follow subscribeBindings: the delay from
    the relay sending the event to each consumer receiving its change, and whether the indexer
    kept pace (compared with the same run without consumers).

    An account's first indexed commit is confirmed by a proof fetched from its PDS, paced per host
    (ATMX_BACKFILL_HOST_RATE, 3/s by default). The replay server stands in for the PDS of every
    account in the corpus, where the network spreads them over many hosts each paced on its own;
    `host_rate` is the pace atmx gives this one stand-in.

    `split`: the deployed shape for many consumers, `atmx index` and `atmx serve` as two
    processes on one database (the stream is served from the log by the API process), rather
    than both in one `atmx run`."""
    corpus = build(CorpusSpec(events, match_share))
    meta = corpus.meta
    matched: dict[tuple[str, str], list[int]] = {}
    for seq, did, path, _action in meta["matched"]:
        matched.setdefault((did, path), []).append(int(seq))
    out: dict[str, Any] = {
        "consumers": consumers,
        "rate": rate,
        "events": events,
        "match_share": match_share,
        "host_rate": host_rate,
        "shape": "atmx index + atmx serve" if split else "atmx run",
    }
    for label, n in (("without consumers", 0), (f"{consumers} consumers", consumers)):
        async with pg.database() as dsn, replay_server(corpus, rate=rate, limit=events) as relay:
            port = _free_port()
            env = atmx_env(relay, dsn, f"127.0.0.1:{port}") | {"ATMX_BACKFILL_HOST_RATE": str(host_rate)}
            quiet = asyncio.subprocess.DEVNULL
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "atmx.indexer.cli", "index" if split else "run", env=env, cwd=ROOT, stderr=quiet
            )
            api = (
                await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "atmx.indexer.cli", "serve", env=env, cwd=ROOT, stderr=quiet
                )
                if split
                else None
            )
            monitor = Monitor(proc.pid)
            sampler = asyncio.create_task(monitor.run())
            try:
                await _wait_port(port)
                follow = (
                    asyncio.create_task(
                        # from the start of the (empty) log: the relay starts when atmx connects, and
                        # a change made before a consumer joined would otherwise be missed by it
                        _consumers(f"http://127.0.0.1:{port}", n, cursor=0, until=None, seconds=events / rate + 15)
                    )
                    if n
                    else None
                )
                await asyncio.sleep(2.0 if n else 0.5)  # consumers connected before the first event
                conn = await relay.wait_connected(120)
                cpu0 = monitor.cpu()
                db = await asyncpg.connect(dsn)
                try:
                    lag = await _follow_cursor(db, events, conn["first_sent"], rate)
                finally:
                    await db.close()
                cpu = monitor.cpu() - cpu0
                row: dict[str, Any] = {"run": label, "indexer_cpu_s": round(cpu, 1)} | lag
                if follow is not None:
                    received = await follow
                    stats = await relay.stats()
                    sent = {int(k): v for k, v in stats["connections"][-1]["matched_sent"].items()}
                    row |= _delivery(received, matched, sent)
                out[label] = row
                _log(f"fanout {label}: {row}")
            finally:
                sampler.cancel()
                for p in (proc, api):
                    if p is not None:
                        p.terminate()
                        await p.wait()
    return out


async def _follow_cursor(db: asyncpg.Connection, last: int, first_sent: float, rate: float) -> dict[str, Any]:
    """Poll the saved cursor until the last event; the cursor's delay behind the paced relay."""
    behind: list[float] = []
    while True:
        seq = await db.fetchval("SELECT max(seq) FROM cursors") or 0
        now = time.time()
        behind.append(max(0.0, now - (first_sent + seq / rate)))
        if seq >= last:
            break
        await asyncio.sleep(0.2)
    return {
        "cursor_delay_p50_s": round(percentile(behind, 50), 2),
        "cursor_delay_p99_s": round(percentile(behind, 99), 2),
        "events_per_s": round(last / (time.time() - first_sent)),
    }


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _delivery(
    received: dict[str, Any], matched: dict[tuple[str, str], list[int]], sent: dict[int, float]
) -> dict[str, Any]:
    """Latency of each (consumer, change): its receive time minus the send time of the firehose event
    that caused it (the k-th change of a record maps to its k-th matched event)."""
    seen: dict[tuple[str, str], int] = {}
    origin: dict[int, float] = {}
    for seq, did, uri, action, _time in received["changes"]:
        if action == "verdict":
            continue  # XMTP verdicts are caused by the XMTP stage, not by an event
        path = uri.split("/", 3)[3]
        k = seen.get((did, path), 0)
        seen[(did, path)] = k + 1
        seqs = matched.get((did, path), [])
        if k < len(seqs) and seqs[k] in sent:
            origin[int(seq)] = sent[seqs[k]]
    # only events sent once every consumer was connected: earlier ones wait for the connections
    ready = received.get("ready_at") or 0.0
    latencies = [t - origin[seq] for seq, t in received["arrivals"] if seq in origin and origin[seq] >= ready]
    # the stream's own share: from the change's commit to the log (its `time`) to each consumer
    committed = {seq: _epoch(t) for seq, *_, t in received["changes"]}
    fanout = [t - committed[seq] for seq, t in received["arrivals"] if seq in committed and committed[seq] >= ready]
    return {
        "stream_p50_ms": round(percentile(fanout, 50) * 1000, 1) if fanout else None,
        "stream_p99_ms": round(percentile(fanout, 99) * 1000, 1) if fanout else None,
        "changes": len(origin),
        "deliveries": len(latencies),
        "delivery_p50_ms": round(percentile(latencies, 50) * 1000, 1) if latencies else None,
        "delivery_p99_ms": round(percentile(latencies, 99) * 1000, 1) if latencies else None,
        "consumers_connected": received["connected"],
        "consumers_closed_early": received["closed_early"],
    }


async def _wait_port(port: int, wait_s: float = 60) -> None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError("atmx did not listen in time")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stream_bench")
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("replay")
    r.add_argument("--changes", type=int, default=1_000_000)
    r.add_argument("--runs", type=int, default=3)
    r.add_argument("--json", action="store_true", help="the xrpc.v1.json framing")
    pr = sub.add_parser("proofs")
    pr.add_argument("--bindings", type=int, default=1_000_000)
    pr.add_argument("--seconds", type=float, default=20.0)
    pr.add_argument("--concurrency", type=int, default=16)
    f = sub.add_parser("fanout")
    f.add_argument("--consumers", type=int, default=1000)
    f.add_argument("--rate", type=float, default=2000.0)
    f.add_argument("--events", type=int, default=60_000)
    f.add_argument("--match-share", type=float, default=0.01)
    f.add_argument("--host-rate", type=float, default=1000.0, help="proof fetches/s atmx allows the PDS stand-in")
    f.add_argument("--split", action="store_true", help="atmx index and atmx serve as two processes")
    a = p.parse_args(argv)

    async def go() -> dict[str, Any]:
        async with BenchPostgres() as pg:
            if a.what == "replay":
                return await replay(pg, changes=a.changes, runs=a.runs, json_framing=a.json)
            if a.what == "proofs":
                return await proofs(pg, bindings=a.bindings, seconds=a.seconds, concurrency=a.concurrency)
            return await fanout(
                pg,
                consumers=a.consumers,
                rate=a.rate,
                events=a.events,
                match_share=a.match_share,
                host_rate=a.host_rate,
                split=a.split,
            )

    result = asyncio.run(go())
    result["machine"] = {"nproc": os.cpu_count(), "load": list(os.getloadavg())}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
