"""A binding's proof and its history, as getBindingProof and getBindingHistory read them (asyncpg).

Hidden accounts are filtered in SQL with the same rule as every other read (queries.VISIBLE).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from atmx.indexer.store.queries import QUERY_TIMEOUT, VISIBLE

_PROOF_SQL = f"""
SELECT p.car, p.rev, p.signing_key, p.pds, p.observed_at, b.cid, b.did
FROM binding_proofs p
JOIN bindings b ON b.uri = p.uri
JOIN accounts a ON a.did = b.did
WHERE p.uri = $1 AND {VISIBLE}
"""

_HISTORY_SQL = f"""
SELECT h.id, h.uri, h.protocol, h.rev, h.cid, h.action, h.status, h.reason, h.projection, h.observed_at
FROM binding_history h
JOIN accounts a ON a.did = h.did
WHERE h.did = $1 AND ($2::text IS NULL OR h.protocol = $2) AND h.id < $3 AND {VISIBLE}
ORDER BY h.id DESC
LIMIT $4
"""


@dataclass(frozen=True, slots=True)
class StoredProof:
    car: bytes
    rev: str
    cid: str
    signing_key: str | None
    pds: str | None
    observed_at: datetime


@dataclass(frozen=True, slots=True)
class Version:
    id: int
    uri: str
    protocol: str
    rev: str
    cid: str | None
    action: str
    status: str
    reason: str | None
    projection: Any
    observed_at: datetime


async def get_proof(pool: asyncpg.Pool, uri: str) -> StoredProof | None:
    """The proof of a visible binding's current version."""
    row = await pool.fetchrow(_PROOF_SQL, uri, timeout=QUERY_TIMEOUT)
    if row is None:
        return None
    return StoredProof(row["car"], row["rev"], row["cid"], row["signing_key"], row["pds"], row["observed_at"])


async def get_history(
    pool: asyncpg.Pool, did: str, protocol: str | None, *, before_id: int | None, limit: int
) -> list[Version]:
    """Versions of a visible account's bindings, newest first, strictly before `before_id`."""
    rows = await pool.fetch(_HISTORY_SQL, did, protocol, before_id or 2**63 - 1, limit, timeout=QUERY_TIMEOUT)
    return [
        Version(
            r["id"],
            r["uri"],
            r["protocol"],
            r["rev"],
            r["cid"],
            r["action"],
            r["status"],
            r["reason"],
            r["projection"],
            r["observed_at"],
        )
        for r in rows
    ]
