"""PostgreSQL connections: the pool, the schema bootstrap and the embedded server.

With no database URL atmx runs a private PostgreSQL from the `pgserver` wheel in its
data directory, so `pip install` is the only set-up step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

from atmx.indexer.fatal import Fatal

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
        fix = "set ATMX_DATA_DIR (--data-dir) to a writable directory, or ATMX_DATABASE_URL to a PostgreSQL server"
        try:
            pgdata.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Fatal(f"cannot create the embedded database in {pgdata}: {exc.strerror or exc}; {fix}") from None
        created = not (pgdata / "PG_VERSION").exists()
        try:
            # "stop": shut the server down when the last atmx process using it exits
            # (pgserver counts its users), but keep the data.
            self._server = pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
            uri: str = self._server.get_uri()
        except Exception as exc:  # initdb or pg_ctl failed: their output is in pgdata/log
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise Fatal(
                f"cannot start the embedded PostgreSQL in {pgdata}: {why} (see {pgdata / 'log'}); {fix}"
            ) from None
        log.info("embedded PostgreSQL %s %s", "created in" if created else "running in", pgdata)
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


def describe_dsn(dsn: str) -> str:
    """Where a DSN points, for messages: host:port or the socket directory, never the password."""
    parts = urlsplit(dsn)
    socket_dir = parse_qs(parts.query).get("host", [""])[0]
    try:
        port = parts.port
    except ValueError:
        port = None
    if socket_dir.startswith("/") or (not parts.hostname and socket_dir):
        return socket_dir
    return f"{parts.hostname or 'localhost'}:{port or 5432}"


def _why(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, TimeoutError):
        return "no answer"
    if isinstance(exc, asyncpg.CannotConnectNowError):
        return "starting up"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


# Refusals that waiting will not change: the operator has to fix the URL or the server.
_REFUSED = (
    asyncpg.InvalidAuthorizationSpecificationError,  # bad password, no such role, pg_hba
    asyncpg.InvalidCatalogNameError,  # no such database
    asyncpg.ClientConfigurationError,  # a malformed DSN
    asyncpg.InvalidPasswordError,
)


async def wait_for_database(dsn: str, *, patience: float = 30.0, name: str = "ATMX_DATABASE_URL") -> None:
    """Block until the server accepts connections (start-up, restarts), saying once that it waits.

    Raises Fatal (one line for the operator) when it refuses the login or the database, or
    does not answer within `patience` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    where = describe_dsn(dsn)
    said = False
    while True:
        try:
            conn = await asyncpg.connect(dsn, timeout=min(5.0, max(0.5, patience)))
        except _REFUSED as exc:
            raise Fatal(f"PostgreSQL at {where} refused the connection: {_why(exc)}; check {name}") from None
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            if loop.time() > deadline:
                raise Fatal(
                    f"PostgreSQL at {where} did not answer within {patience:g}s ({_why(exc)}); start it, or fix {name}"
                ) from None
            if not said:
                log.warning("waiting for PostgreSQL at %s (%s)…", where, _why(exc))
                said = True
            await asyncio.sleep(0.5)
        else:
            await conn.close()
            if said:
                log.info("PostgreSQL at %s answers", where)
            return
