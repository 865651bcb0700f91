"""Which database failures are an outage to wait out, rather than a refusal of one statement.

The one list every caller uses: the pipeline's writer retries a batch, the gap repair and the
XMTP stage pause, the leader lock gives up its term, the API answers 503.
"""

from __future__ import annotations

from typing import Final

import asyncpg

__all__ = ["TRANSIENT_DB_ERRORS"]

TRANSIENT_DB_ERRORS: Final[tuple[type[BaseException], ...]] = (
    TimeoutError,
    OSError,  # connection refused or reset
    asyncpg.InterfaceError,  # the pool or connection was closed under us
    asyncpg.PostgresConnectionError,
    asyncpg.InvalidCatalogNameError,  # the database is being re-created
    asyncpg.OperatorInterventionError,  # shutdown, restart, terminated backend
    asyncpg.TooManyConnectionsError,
    asyncpg.TransactionRollbackError,  # serialization failure, deadlock: retry as is
    # a pool's reset of a connection the server just closed can end in a protocol-state error
    asyncpg.InternalClientError,
)
