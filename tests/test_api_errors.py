"""api/errors.py: the XRPC error value and which failures the API answers with 503."""

from __future__ import annotations

import asyncpg

from atmx.api.errors import DATABASE_UNAVAILABLE, XrpcError, invalid_request
from atmx.indexer.store.errors import TRANSIENT_DB_ERRORS


def test_xrpc_error_carries_status_name_and_message() -> None:
    error = XrpcError(404, "NotFound", "no such account")
    assert (error.status, error.name, error.message, str(error)) == (
        404,
        "NotFound",
        "no such account",
        "no such account",
    )


def test_invalid_request_is_a_400() -> None:
    error = invalid_request("actor is required")
    assert (error.status, error.name, error.message) == (400, "InvalidRequest", "actor is required")


def test_the_api_answers_503_for_exactly_the_indexers_transient_failures() -> None:
    assert DATABASE_UNAVAILABLE is TRANSIENT_DB_ERRORS
    assert isinstance(asyncpg.TooManyConnectionsError(), DATABASE_UNAVAILABLE)
    assert not isinstance(asyncpg.UniqueViolationError(), DATABASE_UNAVAILABLE)
