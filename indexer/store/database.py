"""PostgreSQL connections: the pool, the schema bootstrap and the embedded server.

With no database URL atmx runs a private PostgreSQL from the `pgserver` wheel in its
data directory, so `pip install` is the only set-up step.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

# Serialises schema bootstraps between processes that share one database.
_SCHEMA_LOCK_KEY = 0x61746D78  # "atmx"


def schema_sql() -> str:
    return resources.files("atmx.indexer").joinpath("schema.sql").read_text(encoding="utf-8")


@dataclass
class EmbeddedPostgres:
    """A private PostgreSQL server living in `<data_dir>/pg`, started on demand."""

    data_dir: Path
    _server: Any = None

    def start(self) -> str:
        import pgserver  # heavy import; only when the embedded server is used

        pgdata = self.data_dir / "pg"
        pgdata.mkdir(parents=True, exist_ok=True)
        # "stop": shut the server down when the last atmx process using it exits
        # (pgserver counts its users), but keep the data.
        self._server = pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
        uri: str = self._server.get_uri()
        log.info("embedded PostgreSQL running in %s", pgdata)
        return uri

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        command_timeout=30,
    )
    assert pool is not None
    return pool


async def apply_schema(pool: asyncpg.Pool) -> None:
    """Apply schema.sql; safe to run from several processes at once."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK_KEY)
        await conn.execute(schema_sql())


async def wait_for_database(dsn: str, *, patience: float = 30.0) -> None:
    """Block until the server accepts connections (startup, restarts)."""
    deadline = asyncio.get_running_loop().time() + patience
    while True:
        try:
            conn = await asyncpg.connect(dsn, timeout=5)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)
        else:
            await conn.close()
            return
