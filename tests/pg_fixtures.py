"""A real, throwaway PostgreSQL for the test suite (the pgserver wheel, as in production's default).

One server per test session; every test that asks for `db_dsn` gets a fresh database.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from atmx.indexer.store.database import EmbeddedPostgres, apply_schema, create_pool

_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    """DSN of the maintenance database of a session-wide server (or ATMX_TEST_DATABASE_URL)."""
    external = os.environ.get("ATMX_TEST_DATABASE_URL")
    if external:
        yield external
        return
    with tempfile.TemporaryDirectory(prefix="atmx-test-pg-") as tmp:
        server = EmbeddedPostgres(Path(tmp))
        dsn = server.start()
        try:
            yield dsn
        finally:
            server.stop()


def with_database(dsn: str, name: str) -> str:
    # pgserver's URI is postgresql://postgres:@/postgres?host=/socket/dir
    base, _, query = dsn.partition("?")
    head, _, _db = base.rpartition("/")
    return f"{head}/{name}" + (f"?{query}" if query else "")


@pytest.fixture
async def db_dsn(pg_server_dsn: str) -> AsyncIterator[str]:
    """A fresh, empty database with the schema applied; dropped afterwards."""
    name = f"atmx_test_{os.getpid()}_{next(_counter)}"
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = with_database(pg_server_dsn, name)
    pool = await create_pool(dsn, max_size=2)
    try:
        await apply_schema(pool)
    finally:
        await pool.close()
    yield dsn
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def db_pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(db_dsn, max_size=5)
    yield pool
    await pool.close()
