"""`atmx verify`: verify every commit of a folder of captured frames or of a live firehose."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import aiohttp

from atmx.indexer.config import ConfigError, Settings, firehose_url
from atmx.indexer.fatal import Fatal
from atmx.indexer.firehose.audit import Auditor, SourceUnavailable, frames_from_dir, frames_from_url
from atmx.indexer.identity.resolver import IdentityResolver


def source_url(source: str) -> str | None:
    """The subscribeRepos URL of a relay given as ATMX_RELAY is, or None for a folder of frames."""
    if "://" not in source and (Path(source).exists() or "/" in source or source.startswith(".")):
        if not Path(source).is_dir():
            raise Fatal(f"{source} is not a directory of .bin frames (nor a relay host or URL)", code=2)
        return None
    try:
        return firehose_url(source)
    except ConfigError as exc:
        raise Fatal(f"{source}: {exc}", code=2) from None


async def verify(settings: Settings, args: argparse.Namespace) -> int:
    url = source_url(args.source)
    async with aiohttp.ClientSession() as session:
        resolver = IdentityResolver(plc_url=settings.plc_url, session=session, allow_insecure_http=True)
        auditor = Auditor(resolver)
        if url is not None:
            try:
                async for frame in frames_from_url(url, idle=args.idle, limit=args.limit):
                    await auditor.check(frame)
            except SourceUnavailable as exc:
                raise Fatal(f"{exc}; check the relay host and port") from None
        else:
            for frame in frames_from_dir(Path(args.source)):
                await auditor.check(frame)
    report = auditor.report
    print(json.dumps(report.as_json()) if args.json else report.as_text())
    return 0 if not report.failed else 1
