"""indexer/store/errors.py: which database failures are an outage to wait out."""

from __future__ import annotations

import asyncpg
import pytest

from atmx.indexer.store.errors import TRANSIENT_DB_ERRORS


@pytest.mark.parametrize(
    "error",
    [
        TimeoutError(),
        ConnectionRefusedError(),
        ConnectionResetError(),
        asyncpg.InterfaceError("pool is closed"),
        asyncpg.ConnectionDoesNotExistError(),
        asyncpg.CannotConnectNowError(),  # the server is starting up
        asyncpg.AdminShutdownError(),
        asyncpg.InvalidCatalogNameError(),
        asyncpg.TooManyConnectionsError(),
        asyncpg.SerializationError(),
        asyncpg.DeadlockDetectedError(),
        asyncpg.InternalClientError(),
    ],
    ids=type,
)
def test_outages_are_transient(error: BaseException) -> None:
    assert isinstance(error, TRANSIENT_DB_ERRORS)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.UniqueViolationError(),
        asyncpg.UndefinedTableError(),
        asyncpg.DataError(),
        asyncpg.PostgresSyntaxError(),
        ValueError(),
    ],
    ids=type,
)
def test_refusals_of_one_statement_are_not(error: BaseException) -> None:
    assert not isinstance(error, TRANSIENT_DB_ERRORS)
