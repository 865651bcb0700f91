"""Sustained concurrent load on the XRPC API over loopback, against a seeded PostgreSQL.

The API runs in a child process (so its RSS is its own); an aiohttp client keeps `--concurrency`
requests in flight for `--duration` seconds over a mix of every method, then reports requests/s,
p50/p99 latency, errors by kind and the server's RSS after warm-up and at the end.

    python benchmarks/api_load.py                 # ~10 s smoke on an embedded PostgreSQL
    python benchmarks/api_load.py --long          # 60 s
    python benchmarks/api_load.py --dsn postgresql://... --duration 30 --concurrency 64

The rate limiter is off in the server under load (one client IP would exhaust it at once).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import asyncpg

NS = "directory.atmx"
SMOKE_SECONDS = 10.0
LONG_SECONDS = 60.0
WARMUP_SECONDS = 2.0


# --- seeding --------------------------------------------------------------------------------


def account_did(i: int) -> str:
    return f"did:plc:load{i:020d}"


def inbox_id(i: int) -> str:
    return f"{i:064x}"


async def seed(pool: asyncpg.Pool, accounts: int) -> None:
    """`accounts` accounts, each with a verified XMTP binding and a DIDComm key package."""
    rows = range(accounts)
    await pool.executemany(
        "INSERT INTO accounts (did, handle, handle_verified) VALUES ($1, $2, true)",
        [(account_did(i), f"user{i}.load.test") for i in rows],
    )
    await pool.executemany(
        """INSERT INTO bindings (did, protocol, collection, rkey, uri, cid, rev, record, status,
                                 xmtp_inbox_id, xmtp_env, xmtp_installation, created_at, verified_at)
           VALUES ($1, 'xmtp', 'org.xmtp.inbox', 'self', $2, $3, '3lrev', $4, 'verified', $5, 'production', $6, $7,
                   now())""",
        [
            (
                account_did(i),
                f"at://{account_did(i)}/org.xmtp.inbox/self",
                "bafyreigxmtp" + "a" * 47,
                {"$type": "org.xmtp.inbox", "id": inbox_id(i), "createdAt": "2026-01-02T03:04:05.678Z"},
                inbox_id(i),
                "cd" * 32,
                "2026-01-02T03:04:05.678Z",
            )
            for i in rows
        ],
    )
    await pool.executemany(
        """INSERT INTO bindings (did, protocol, collection, rkey, uri, cid, rev, record, status, created_at)
           VALUES ($1, 'didcomm', 'at.didcomm.keyPackage', 'self', $2, $3, '3lrev', $4, 'valid', $5)""",
        [
            (
                account_did(i),
                f"at://{account_did(i)}/at.didcomm.keyPackage/self",
                "bafyreigdidc" + "a" * 47,
                {
                    "$type": "at.didcomm.keyPackage",
                    "did": "did:peer:2.Ez6LSexample",
                    "mediators": ["did:web:mediator.example.com"],
                    "createdAt": "2026-01-02T03:04:05.678Z",
                },
                "2026-01-02T03:04:05.678Z",
            )
            for i in rows
        ],
    )


# --- the server in a child process ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _serve(dsn: str, port: int, rate_limit: str) -> None:
    from atmx.api.app import create_app, run_api
    from atmx.api.ratelimit import FixedWindowLimiter, RatePolicy
    from atmx.indexer.config import parse_rate_limit
    from atmx.indexer.store.database import create_pool

    pool = await create_pool(dsn, max_size=10)
    policy = parse_rate_limit(rate_limit)
    limiter = FixedWindowLimiter(RatePolicy(*policy)) if policy else None
    app = create_app(pool_provider=lambda: pool, version="load", rate_limiter=limiter)
    runner = await run_api(app, "127.0.0.1", port)
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await pool.close()


@contextlib.asynccontextmanager
async def api_server(dsn: str, *, rate_limit: str = "0") -> AsyncIterator[tuple[str, int]]:
    """(base URL, pid) of the API serving `dsn` on a loopback port, in a child process."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", "--dsn", dsn, "--port", str(port), "--rate-limit", rate_limit,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"API server did not start (exit {await proc.wait()})")
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --- the load --------------------------------------------------------------------------------


def request_mix(rng: random.Random, accounts: int) -> tuple[str, list[tuple[str, str]]]:
    """One request: (method, query params), over every method, hits and misses."""
    i = rng.randrange(accounts * 2)  # half of them miss
    choice = rng.randrange(5)
    if choice == 0:
        return "getIdentity", [("actor", account_did(i) if i % 3 else f"user{i}.load.test")]
    if choice == 1:
        return "getIdentities", [("actors", account_did(rng.randrange(accounts * 2))) for _ in range(10)]
    if choice == 2:
        return "resolveXmtpInbox", [("inboxId", inbox_id(i))]
    if choice == 3:
        return "resolveXmtpInboxes", [("inboxIds", inbox_id(rng.randrange(accounts * 2))) for _ in range(10)]
    return "listBindings", [("protocol", rng.choice(("xmtp", "didcomm"))), ("limit", "50")]


# 400 IdentityNotFound for a miss is a correct answer, not an error.
EXPECTED = {200, 400}


@dataclass
class Report:
    seconds: float
    concurrency: int
    accounts: int
    requests: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    error_kinds: dict[str, int]
    rss_start_mib: float
    rss_end_mib: float


async def _worker(
    session: aiohttp.ClientSession,
    base: str,
    rng: random.Random,
    accounts: int,
    until: float,
    latencies: list[float],
    errors: Counter[str],
) -> None:
    while time.monotonic() < until:
        method, params = request_mix(rng, accounts)
        start = time.perf_counter()
        try:
            async with session.get(f"{base}/xrpc/{NS}.{method}", params=params) as resp:
                body = await resp.read()
                if resp.status not in EXPECTED:
                    errors[f"{method}:{resp.status}"] += 1
                elif resp.status == 400 and json.loads(body).get("error") != "IdentityNotFound":
                    errors[f"{method}:400:{json.loads(body).get('error')}"] += 1
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            errors[f"{method}:{type(exc).__name__}"] += 1
        latencies.append(time.perf_counter() - start)


async def run_load(base: str, pid: int, *, seconds: float, concurrency: int, accounts: int, seed: int = 1) -> Report:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        warm_until = time.monotonic() + min(WARMUP_SECONDS, seconds / 4)
        rngs = [random.Random(seed * 1000 + n) for n in range(concurrency)]
        await asyncio.gather(*(_worker(session, base, r, accounts, warm_until, [], errors) for r in rngs))
        rss_start = rss_bytes(pid)
        start = time.monotonic()
        until = start + seconds
        await asyncio.gather(*(_worker(session, base, r, accounts, until, latencies, errors) for r in rngs))
        elapsed = time.monotonic() - start
        rss_end = rss_bytes(pid)
    ms = sorted(x * 1000 for x in latencies)
    q = statistics.quantiles(ms, n=100) if len(ms) >= 2 else [0.0] * 99
    return Report(
        seconds=round(elapsed, 1),
        concurrency=concurrency,
        accounts=accounts,
        requests=len(ms),
        requests_per_second=round(len(ms) / elapsed, 1),
        p50_ms=round(q[49], 2),
        p99_ms=round(q[98], 2),
        errors=sum(errors.values()),
        error_kinds=dict(errors),
        rss_start_mib=round(rss_start / 2**20, 1),
        rss_end_mib=round(rss_end / 2**20, 1),
    )


async def benchmark(dsn: str, *, seconds: float, concurrency: int, accounts: int) -> Report:
    """Seed `dsn` (an empty atmx database), serve it, load it."""
    from atmx.indexer.store.database import create_pool

    pool = await create_pool(dsn, max_size=2)
    try:
        await seed(pool, accounts)
    finally:
        await pool.close()
    async with api_server(dsn) as (base, pid):
        return await run_load(base, pid, seconds=seconds, concurrency=concurrency, accounts=accounts)


async def _main(args: argparse.Namespace) -> None:
    if args.serve:
        await _serve(args.dsn, args.port, args.rate_limit)
        return
    seconds = args.duration or (LONG_SECONDS if args.long else SMOKE_SECONDS)
    if args.dsn:
        report = await benchmark(args.dsn, seconds=seconds, concurrency=args.concurrency, accounts=args.accounts)
    else:
        from atmx.indexer.store.database import EmbeddedPostgres, apply_schema, create_pool

        with tempfile.TemporaryDirectory(prefix="atmx-load-pg-") as tmp:
            server = EmbeddedPostgres(Path(tmp))
            dsn = server.start()
            try:
                pool = await create_pool(dsn, max_size=2)
                await apply_schema(pool)
                await pool.close()
                report = await benchmark(dsn, seconds=seconds, concurrency=args.concurrency, accounts=args.accounts)
            finally:
                server.stop()
    print(json.dumps(asdict(report), indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="an empty atmx database (schema applied); default: embedded PostgreSQL")
    parser.add_argument("--duration", type=float, help=f"seconds of load (default {SMOKE_SECONDS:g}, --long 60)")
    parser.add_argument("--long", action="store_true", default=os.environ.get("ATMX_LONG") == "1")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rate-limit", default="0", help=argparse.SUPPRESS)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
