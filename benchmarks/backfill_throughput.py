"""Backfill throughput (repos/s) against the reference PDS on loopback.

    PYTHONPATH=tests .venv/bin/python benchmarks/backfill_throughput.py --repos 300 --workers 32 --host-concurrency 32

Seeds N accounts (each with an XMTP inbox, half also a DIDComm key package) on a fresh
devnet, then times `atmx backfill --pds <devnet>` (discovery + 2 verified getRecord per repo
+ writes) into a fresh embedded PostgreSQL. Rate limits are lifted (loopback, one host).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from devnet_harness import Devnet, xmtp_inbox_record
from sample_records import keypackage_record

from atmx.indexer.backfill.client import Options
from atmx.indexer.backfill.job import backfiller, pds_sources
from atmx.indexer.config import Settings
from atmx.indexer.store.database import EmbeddedPostgres, apply_schema, create_pool


async def seed(net: Devnet, n: int) -> None:
    async with net.client() as pds:
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with sem:
                acct = await pds.create_account(f"bench{secrets.token_hex(4)}.test")
                await pds.put_record(acct, "org.xmtp.inbox", "self", xmtp_inbox_record())
                if i % 2 == 0:
                    await pds.put_record(acct, "at.didcomm.keyPackage", "self", keypackage_record())

        await asyncio.gather(*(one(i) for i in range(n)))


async def measure(net: Devnet, dsn: str, args: argparse.Namespace) -> dict[str, float]:
    pool = await create_pool(dsn, max_size=max(10, args.workers))
    await apply_schema(pool)
    settings = Settings(plc_url=net.plc_url, handle_resolver=net.pds_url, allow_insecure_http=True)
    opts = Options(
        workers=args.workers,
        host_rate=10_000.0,
        host_burst=1000,
        host_concurrency=args.host_concurrency,
        allow_insecure_http=True,
    )
    try:
        async with aiohttp.ClientSession() as session, backfiller(settings, pool, session, opts=opts) as bf:
            t0 = time.perf_counter()
            summary = await bf.run(pds_sources([net.pds_url]))
            seconds = time.perf_counter() - t0
        bindings = await pool.fetchval("SELECT count(*) FROM bindings")
    finally:
        await pool.close()
    repos = sum(summary.outcomes.values())
    return {
        "repos": repos,
        "bindings": bindings,
        "seconds": round(seconds, 2),
        "repos_per_s": round(repos / seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repos", type=int, default=300)
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--host-concurrency", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Devnet() as net:
        pg = EmbeddedPostgres(Path(tmp))
        dsn = pg.start()
        try:
            asyncio.run(seed(net, args.repos))
            result = asyncio.run(measure(net, dsn, args))
        finally:
            pg.stop()
    print(json.dumps({**vars(args), **result}))


if __name__ == "__main__":
    main()
