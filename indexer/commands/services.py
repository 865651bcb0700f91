"""`atmx run`, `atmx index`, `atmx serve`: the long-running services."""

from __future__ import annotations

import argparse

from atmx.indexer.config import Settings
from atmx.indexer.service import serve


async def run(settings: Settings, _args: argparse.Namespace) -> int:
    await serve(settings, index=True, api=True)
    return 0


async def index(settings: Settings, _args: argparse.Namespace) -> int:
    await serve(settings, index=True, api=False)
    return 0


async def serve_api(settings: Settings, _args: argparse.Namespace) -> int:
    await serve(settings, index=False, api=True)
    return 0
