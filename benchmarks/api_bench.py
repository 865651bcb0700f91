"""The XRPC API under concurrent load on loopback, beside the reference PDS's getRecord.

For each index size (synthetic bindings inserted with one `INSERT ... SELECT generate_series`,
then ANALYZE), `atmx serve` (the real command, rate limiter off) answers `getIdentity`,
`resolveXmtpInbox` and the batch calls (`getIdentities`, `resolveXmtpInboxes`, 25 per call),
each alone for `seconds` at `concurrency` connections, from the closed-loop client in
httpload.py. At the smallest size getIdentity is also swept over concurrency (1..128) to find
the highest load the machine sustains. Then the reference PDS (`tests/devnet`, rate limits off)
serves `com.atproto.repo.getRecord` for 200 accounts' records to the same client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, BinaryIO

from .consumers import _free_port, _stop
from .corpus import CACHE, ROOT
from .httpload import run_load
from .pg import BenchPostgres

NS = "/xrpc/directory.atmx."
BATCH = 25
SWEEP = (1, 8, 32, 128)


def did_of(i: int) -> str:
    return f"did:plc:bench{i:019d}"


def inbox_of(i: int) -> str:
    return f"{i:064x}"


async def seed(dsn: str, size: int) -> float:
    """`size` accounts with one verified XMTP binding each; returns the seconds it took."""
    from atmx.indexer.store.database import apply_schema, create_pool

    t0 = time.perf_counter()
    pool = await create_pool(dsn, max_size=2)
    try:
        await apply_schema(pool)
        await pool.execute(
            """INSERT INTO accounts (did, handle, handle_verified, rev)
               SELECT 'did:plc:bench' || lpad(i::text, 19, '0'), 'u' || i || '.bench.test', true, '3lbenchrev222'
               FROM generate_series(0, $1 - 1) AS i""",
            size,
            timeout=3600,  # 10^7 rows take minutes; the pool's default is 30 s
        )
        await pool.execute(
            """INSERT INTO bindings (did, protocol, collection, rkey, uri, cid, rev, record, status, xmtp_inbox_id,
                                     xmtp_env, xmtp_installation, created_at, verified_at)
               SELECT d, 'xmtp', 'org.xmtp.inbox', 'self', 'at://' || d || '/org.xmtp.inbox/self',
                      'bafyreib' || lpad(i::text, 51, 'a'), '3lbenchrev222',
                      jsonb_build_object('$type', 'org.xmtp.inbox', 'id', x,
                                         'verificationSignature', repeat('A', 86) || '==',
                                         'createdAt', '2026-01-02T03:04:05.678Z'),
                      'verified', x, 'production', repeat('cd', 32), '2026-01-02T03:04:05.678Z', now()
               FROM (SELECT i, 'did:plc:bench' || lpad(i::text, 19, '0') AS d, lpad(to_hex(i), 64, '0') AS x
                     FROM generate_series(0, $1 - 1) AS i) AS s""",
            size,
            timeout=3600,  # 10^7 rows take minutes; the pool's default is 30 s
        )
        await pool.execute("ANALYZE accounts; ANALYZE bindings", timeout=3600)
    finally:
        await pool.close()
    return time.perf_counter() - t0


@contextlib.asynccontextmanager
async def atmx_api(dsn: str) -> AsyncIterator[str]:
    port = _free_port()
    env = dict(os.environ, ATMX_DATABASE_URL=dsn, ATMX_LISTEN=f"127.0.0.1:{port}", ATMX_API_RATE_LIMIT="0")
    env["ATMX_LOG_LEVEL"] = "WARNING"
    log = _open_log()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "atmx.indexer.cli", "serve", env=env, cwd=ROOT, stderr=log
    )
    try:
        await _wait_http(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        await _stop(proc)
        log.close()


def _open_log() -> BinaryIO:
    CACHE.mkdir(parents=True, exist_ok=True)
    return open(CACHE / "atmx-serve.log", "ab")  # the caller closes it


async def _wait_http(port: int, proc: asyncio.subprocess.Process, wait_s: float = 60) -> None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"atmx serve exited with {proc.returncode}")
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError("atmx serve did not listen in time")


def methods(size: int) -> dict[str, Callable[[random.Random], str]]:
    def one_did(rng: random.Random) -> str:
        return f"{NS}getIdentity?actor={did_of(rng.randrange(size))}"

    def one_inbox(rng: random.Random) -> str:
        return f"{NS}resolveXmtpInbox?inboxId={inbox_of(rng.randrange(size))}"

    def many_dids(rng: random.Random) -> str:
        return f"{NS}getIdentities?" + "&".join(f"actors={did_of(rng.randrange(size))}" for _ in range(BATCH))

    def many_inboxes(rng: random.Random) -> str:
        return f"{NS}resolveXmtpInboxes?" + "&".join(f"inboxIds={inbox_of(rng.randrange(size))}" for _ in range(BATCH))

    return {
        "getIdentity": one_did,
        "resolveXmtpInbox": one_inbox,
        f"getIdentities x{BATCH}": many_dids,
        f"resolveXmtpInboxes x{BATCH}": many_inboxes,
    }


async def api_benchmark(
    pg: BenchPostgres, *, sizes: list[int], seconds: float, concurrency: int, pds: bool
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    seeding: dict[int, float] = {}
    for k, size in enumerate(sizes):
        async with pg.database() as dsn:
            seeding[size] = round(await seed(dsn, size), 1)
            print(f"[bench] API: {size:,} bindings seeded in {seeding[size]}s", file=sys.stderr, flush=True)
            async with atmx_api(dsn) as base:
                for name, paths in methods(size).items():
                    levels = SWEEP if (k == 0 and name == "getIdentity") else (concurrency,)
                    for c in levels:
                        result = await run_load(base, paths, concurrency=c, seconds=seconds)
                        rows.append({"target": "atmx", "method": name, "bindings": size, "concurrency": c}
                                    | result.summary())  # fmt: skip
                        _print_row(rows[-1])
    out: dict[str, Any] = {"rows": rows, "seed_seconds": seeding, "seconds": seconds}
    if pds:
        rows.extend(await pds_baseline(seconds=seconds, concurrency=concurrency))
    return out


async def pds_baseline(*, seconds: float, concurrency: int, accounts: int = 200) -> list[dict[str, Any]]:
    sys.path.insert(0, str(ROOT / "tests"))
    from devnet_harness import Devnet, xmtp_inbox_record

    rows: list[dict[str, Any]] = []
    with Devnet() as net:
        async with net.client() as client:
            sem = asyncio.Semaphore(8)

            async def one(i: int) -> str:
                async with sem:
                    acct = await client.create_account(f"pb{i}-{random.randrange(10**6)}.test")
                    await client.put_record(acct, "org.xmtp.inbox", "self", xmtp_inbox_record(), validate=False)
                    return str(acct.did)

            dids = await asyncio.gather(*(one(i) for i in range(accounts)))
        paths = [f"/xrpc/com.atproto.repo.getRecord?repo={d}&collection=org.xmtp.inbox&rkey=self" for d in dids]
        for c in sorted({1, concurrency}):
            result = await run_load(net.pds_url, paths, concurrency=c, seconds=seconds)
            rows.append({"target": "reference PDS", "method": "com.atproto.repo.getRecord", "bindings": accounts,
                         "concurrency": c} | result.summary())  # fmt: skip
            _print_row(rows[-1])
    return rows


def _print_row(row: dict[str, Any]) -> None:
    print(
        f"[bench] API {row['target']} {row['method']} n={row['bindings']:,} c={row['concurrency']}: "
        f"{row['rps']:,.0f} req/s p50 {row['p50_ms']} ms p99 {row['p99_ms']} ms errors {row['errors']}",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":

    async def _main() -> None:
        async with BenchPostgres() as pg:
            await api_benchmark(pg, sizes=[1000], seconds=2.0, concurrency=32, pds="--pds" in sys.argv)

    asyncio.run(_main())
