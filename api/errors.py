"""XRPC error values and the exceptions that mean "the database is unreachable"."""

from __future__ import annotations

from atmx.indexer.store.errors import TRANSIENT_DB_ERRORS


class XrpcError(Exception):
    """An error answered as XRPC JSON `{"error": name, "message": message}`."""

    def __init__(self, status: int, name: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.name = name
        self.message = message


def invalid_request(message: str) -> XrpcError:
    return XrpcError(400, "InvalidRequest", message)


# Failures of the database itself (down, restarting, dropped, pool closed, too slow),
# answered 503 so clients back off and retry instead of treating them as bugs.
DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = TRANSIENT_DB_ERRORS
