"""`atmx backfill`: discover repos, fetch their records with proof, print a summary by reason.

Arguments are checked before the database opens, each mistake in one line; the exit status
is 1 when repos failed (a rerun retries them), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from atmx.indexer.backfill.client import FetchError
from atmx.indexer.backfill.job import backfiller, default_sources, pds_sources, read_dids_file
from atmx.indexer.config import Settings
from atmx.indexer.fatal import Fatal
from atmx.indexer.progress import Progress
from atmx.indexer.repo.syntax import is_did
from atmx.indexer.service import open_database


def _dids(args: argparse.Namespace) -> list[str]:
    for did in args.did:
        if not is_did(did):
            raise Fatal(f"--did {did!r} is not a DID (did:plc:… or did:web:…)", code=2)
    dids: list[str] = list(args.did)
    if args.dids_file:
        try:
            text = Path(args.dids_file).read_text()
        except OSError as exc:
            raise Fatal(f"cannot read --dids-file {args.dids_file}: {exc.strerror or exc}", code=2) from None
        from_file = read_dids_file(text)
        bad = next((d for d in from_file if not is_did(d)), None)
        if bad is not None:
            raise Fatal(f"--dids-file {args.dids_file}: {bad[:100]!r} is not a DID (one DID per line)", code=2)
        if not from_file:
            raise Fatal(f"--dids-file {args.dids_file} holds no DID (one DID per line, # for comments)", code=2)
        dids += from_file
    return dids


def _check_pds(urls: list[str], allow_insecure_http: bool) -> None:
    for url in urls:
        scheme = urlsplit(url if "://" in url else "https://" + url).scheme
        if scheme == "http" and not allow_insecure_http:
            raise Fatal(
                f"--pds {url} is not https; ATMX_ALLOW_INSECURE_HTTP=1 allows http:// on loopback test networks",
                code=2,
            )
        if scheme not in ("http", "https"):
            raise Fatal(f"--pds {url} must be an https:// URL", code=2)


async def backfill(settings: Settings, args: argparse.Namespace) -> int:
    dids = _dids(args)
    _check_pds(args.pds, settings.allow_insecure_http)
    sources = pds_sources(args.pds) if args.pds else ([] if dids else default_sources(settings.discovery_host))
    progress = Progress(None if args.no_progress else sys.stderr)
    async with open_database(settings) as db, aiohttp.ClientSession() as session:
        async with backfiller(settings, db.pool, session, progress=progress) as bf:
            try:
                summary = await bf.run(sources, dids=dids, restart=args.restart)
            except FetchError as exc:  # discovery: the listing host failed (fetches never raise)
                raise Fatal(f"cannot list repos: {exc}; run again to resume") from None
    if args.json:
        body = {
            "done": progress.done,
            "total": progress.total,
            "errors": progress.errors,
            "discovered": summary.discovered,
            "outcomes": summary.outcomes,
            "failed": summary.failed,
            "skipped": summary.skipped,
        }
        print(json.dumps(body))
    else:
        print(progress.summary(summary.outcomes, failed=summary.failed, skipped=summary.skipped))
    return 1 if summary.failed or progress.done < progress.total else 0
