"""One embedded PostgreSQL (pgserver, as atmx's default) for a benchmark session; a fresh
database per run, dropped afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from atmx.indexer.store.database import EmbeddedPostgres

_names = itertools.count()


class BenchPostgres:
    def __init__(self, dsn: str | None = None) -> None:
        self._external = dsn or os.environ.get("ATMX_BENCH_DATABASE_URL")
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._server: EmbeddedPostgres | None = None
        self.dsn = self._external or ""

    async def __aenter__(self) -> BenchPostgres:
        if not self._external:
            self._tmp = tempfile.TemporaryDirectory(prefix="atmx-bench-pg-")
            self._server = EmbeddedPostgres(Path(self._tmp.name))
            self.dsn = await asyncio.to_thread(self._server.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            await asyncio.to_thread(self._server.stop)
        if self._tmp is not None:
            self._tmp.cleanup()

    def with_database(self, name: str) -> str:
        base, _, query = self.dsn.partition("?")
        head, _, _db = base.rpartition("/")
        return f"{head}/{name}" + (f"?{query}" if query else "")

    @contextlib.asynccontextmanager
    async def database(self) -> AsyncIterator[str]:
        """DSN of a fresh, empty database (atmx applies its schema on start)."""
        name = f"atmx_bench_{os.getpid()}_{next(_names)}"
        admin = await asyncpg.connect(self.dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        try:
            yield self.with_database(name)
        finally:
            admin = await asyncpg.connect(self.dsn)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()
