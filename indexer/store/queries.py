"""Every read the XRPC API makes (asyncpg), but proofs and history (provenance.py); writes are in apply.py.

Each function is one round trip. Accounts whose status hides them (takedowns,
suspensions, deletions, deactivations) are filtered in SQL, so no caller can
forget to do it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from atmx.indexer.identity.diddoc import mls_delivery_endpoint
from atmx.indexer.records.registry import ONE_RECORD_PROTOCOLS
from atmx.indexer.records.stored import StoredBinding
from atmx.indexer.store.liveness import STALE_AFTER

# Statuses under which an account's bindings are invisible to the API.
HIDDEN_STATUSES: tuple[str, ...] = ("takendown", "suspended", "deleted", "deactivated")

# The statuses a binding of each protocol can have (README, "Binding statuses"): XMTP bindings
# are checked against the XMTP network (pending -> verified | invalid | unverifiable); DIDComm
# key packages have no signature to check (valid | invalid). A protocol not listed here shows
# the statuses it has.
PROTOCOL_STATUSES: dict[str, tuple[str, ...]] = {
    "xmtp": ("verified", "pending", "unverifiable", "invalid"),
    "didcomm": ("valid", "invalid"),
}

# API reads should fail fast rather than pile up behind a stuck database.
QUERY_TIMEOUT = 10.0

# A literal (not a parameter) so every statement keeps a fixed, cacheable plan.
VISIBLE = f"(a.status IS NULL OR a.status <> ALL('{{{','.join(HIDDEN_STATUSES)}}}'::text[]))"

_BINDING_COLUMNS = """
    b.did, b.collection, b.rkey, b.protocol, b.uri, b.cid, b.rev, b.record, b.status, b.reason,
    b.xmtp_inbox_id, b.xmtp_env, b.xmtp_installation, b.created_at, b.indexed_at, b.verified_at
"""

# The first `#atproto_mls` entry of the account's cached DID document (the resolver keeps the
# document of every account it verifies in did_cache, refreshed on #identity events), read only
# beside Catbird rows: the document itself never leaves the database.
_MLS_SERVICE_JOIN = """
LEFT JOIN did_cache d ON d.did = a.did AND b.protocol = 'catbird'
LEFT JOIN LATERAL (
    SELECT s.value AS service
    FROM jsonb_array_elements(
        CASE WHEN jsonb_typeof(d.doc -> 'service') = 'array' THEN d.doc -> 'service' ELSE '[]'::jsonb END
    ) WITH ORDINALITY AS s (value, n)
    WHERE s.value ->> 'id' IN ('#atproto_mls', a.did || '#atproto_mls')
    ORDER BY s.n
    LIMIT 1
) m ON true
"""

# The handle arm repeats `a.handle IS NOT NULL` so the planner can use the partial index.
_IDENTITIES_SQL = f"""
SELECT a.handle, a.handle_verified, a.status AS account_status, m.service AS mls_service, {_BINDING_COLUMNS}
FROM accounts a
JOIN bindings b ON b.did = a.did
{_MLS_SERVICE_JOIN}
WHERE (a.did = ANY($1::text[])
       OR (a.handle IS NOT NULL AND lower(a.handle) = ANY($2::text[]) AND a.handle_verified))
  AND {VISIBLE}
ORDER BY a.did, b.protocol, b.collection, b.rkey
"""

_INBOXES_SQL = f"""
SELECT a.handle, a.handle_verified, {_BINDING_COLUMNS}
FROM bindings b
JOIN accounts a ON a.did = b.did
WHERE b.xmtp_inbox_id = ANY($1::text[])
  AND b.protocol = 'xmtp'
  AND ($2::boolean OR b.status = 'verified')
  AND ($3::text IS NULL OR $3 = ANY(string_to_array(b.xmtp_env, ',')))
  AND {VISIBLE}
ORDER BY b.xmtp_inbox_id, b.did
"""

# Keyset pages over the DID, for protocols of one record per account (ONE_RECORD_PROTOCOLS) ...
_LIST_SQL = f"""
SELECT a.handle, a.handle_verified, {_BINDING_COLUMNS}
FROM bindings b
JOIN accounts a ON a.did = b.did
WHERE b.protocol = $1 AND b.did > $2 AND ($4::text IS NULL OR b.status = $4) AND {VISIBLE}
ORDER BY b.did
LIMIT $3
"""

# ... and over (did, uri) for protocols of many (Catbird devices), where a page may end inside an
# account. A NULL uri means after every binding of the DID. `did >= $2` is the index range
# (protocol, did); the other arm trims the first account.
_LIST_MANY_SQL = f"""
SELECT a.handle, a.handle_verified, {_BINDING_COLUMNS}
FROM bindings b
JOIN accounts a ON a.did = b.did
WHERE b.protocol = $1 AND b.did >= $2 AND (b.did > $2 OR b.uri > $3::text)
  AND ($5::text IS NULL OR b.status = $5) AND {VISIBLE}
ORDER BY b.did, b.uri
LIMIT $4
"""

# A current device record of the account whose (lookup-form) key is `key`, and only while the
# record is valid: key_bytes is set only for records that passed their family's checks.
_MLS_DEVICE_SQL = f"""
SELECT a.handle, a.handle_verified, {_BINDING_COLUMNS}
FROM bindings b
JOIN accounts a ON a.did = b.did
WHERE b.did = $1 AND b.key_bytes = $2 AND b.collection = ANY($3::text[])
  AND b.status IN ('valid', 'verified') AND {VISIBLE}
ORDER BY b.uri
LIMIT 1
"""

# The indexer's latest report (store/liveness.py) and the cursor of the same upstream; without
# a report (no indexer has run since the upgrade), the highest cursor.
_HEALTH_SQL = """
SELECT c.seq,
       EXTRACT(EPOCH FROM (clock_timestamp() - c.event_time))::float8 AS event_age,
       s.state, s.lag_seconds,
       EXTRACT(EPOCH FROM (clock_timestamp() - s.received_at))::float8 AS idle,
       EXTRACT(EPOCH FROM (clock_timestamp() - s.reported_at))::float8 AS report_age
FROM (SELECT 1) one
LEFT JOIN LATERAL (SELECT * FROM firehose_status ORDER BY reported_at DESC LIMIT 1) s ON true
LEFT JOIN LATERAL (
    SELECT * FROM cursors WHERE s.upstream IS NULL OR upstream = s.upstream ORDER BY seq DESC LIMIT 1
) c ON true
"""

# Per (protocol, status) counts, plus a total row per side (protocol NULL) whose DISTINCT count
# is the number of accounts with at least one binding; hidden accounts' apart: one scan.
_COUNTS_SQL = f"""
SELECT h.hidden, b.protocol, b.status, count(*) AS n, count(DISTINCT b.did) AS accounts
FROM bindings b
JOIN accounts a ON a.did = b.did
CROSS JOIN LATERAL (SELECT NOT {VISIBLE} AS hidden) h
GROUP BY GROUPING SETS ((h.hidden, b.protocol, b.status), (h.hidden))
ORDER BY h.hidden, b.protocol NULLS FIRST, b.status
"""


Binding = StoredBinding  # one (account, record) row, with the account's handle when it is verified


@dataclass(frozen=True, slots=True)
class Identity:
    did: str
    handle: str | None  # only when verified
    account_status: str | None  # NULL in the database means active
    handle_lower: str | None  # the claimed handle, lowercased, for matching handle lookups
    bindings: tuple[Binding, ...]
    mls_endpoint: str | None = None  # the DID document's usable #atproto_mls service endpoint


@dataclass(frozen=True, slots=True)
class Health:
    cursor: int | None
    lag_seconds: float | None  # delay of events not yet processed; while disconnected, the cursor event's age
    state: str = "disconnected"  # live | idle | lagging | disconnected (store/liveness.py)
    idle_seconds: float | None = None  # since the indexer last received an event


@dataclass(frozen=True, slots=True)
class IndexCounts:
    accounts: int  # visible accounts with at least one binding
    bindings: dict[tuple[str, str], int]  # (protocol, status) -> visible bindings
    hidden_accounts: int = 0  # taken down, suspended, deleted or deactivated accounts with a binding
    hidden_bindings: int = 0  # their bindings: kept, never served

    def by_protocol(self) -> list[tuple[str, list[tuple[str, int]]]]:
        """Every protocol with each status it can have (0 included), then any other status it has."""
        protocols = list(dict.fromkeys([*PROTOCOL_STATUSES, *(p for p, _ in self.bindings)]))
        out = []
        for protocol in protocols:
            statuses = list(PROTOCOL_STATUSES.get(protocol, ()))
            statuses += sorted(s for p, s in self.bindings if p == protocol and s not in statuses)
            out.append((protocol, [(s, self.bindings.get((protocol, s), 0)) for s in statuses]))
        return out


def _binding(row: Any) -> Binding:
    return Binding(
        did=row["did"],
        handle=row["handle"] if row["handle_verified"] else None,
        collection=row["collection"],
        rkey=row["rkey"],
        protocol=row["protocol"],
        uri=row["uri"],
        cid=row["cid"],
        rev=row["rev"],
        record=row["record"],
        status=row["status"],
        reason=row["reason"],
        xmtp_inbox_id=row["xmtp_inbox_id"],
        xmtp_env=row["xmtp_env"],
        xmtp_installation=row["xmtp_installation"],
        created_at=row["created_at"],
        indexed_at=row["indexed_at"],
        verified_at=row["verified_at"],
    )


async def get_identities(pool: asyncpg.Pool, dids: Sequence[str], handles: Sequence[str]) -> list[Identity]:
    """Visible accounts that have at least one binding, matched by DID or by verified handle.

    `handles` must already be lowercased. An account without bindings is not returned.
    """
    rows = await pool.fetch(_IDENTITIES_SQL, list(dids), list(handles), timeout=QUERY_TIMEOUT)
    out: list[Identity] = []
    group: list[Binding] = []
    mls_endpoint: str | None = None
    for i, row in enumerate(rows):
        group.append(_binding(row))
        if row["mls_service"] is not None:
            mls_endpoint = mls_delivery_endpoint(row["did"], row["mls_service"])
        if i + 1 == len(rows) or rows[i + 1]["did"] != row["did"]:
            handle = row["handle"]
            out.append(
                Identity(
                    did=row["did"],
                    handle=handle if row["handle_verified"] else None,
                    account_status=row["account_status"],
                    handle_lower=handle.lower() if handle is not None and row["handle_verified"] else None,
                    bindings=tuple(group),
                    mls_endpoint=mls_endpoint,
                )
            )
            group = []
            mls_endpoint = None
    return out


async def resolve_xmtp_inboxes(
    pool: asyncpg.Pool, inbox_ids: Sequence[str], *, include_unverified: bool, env: str | None = None
) -> dict[str, list[Binding]]:
    """XMTP bindings per inbox id (only inboxes with at least one match appear as keys); with `env`,
    only those whose verdict came from that XMTP environment."""
    rows = await pool.fetch(_INBOXES_SQL, list(inbox_ids), include_unverified, env, timeout=QUERY_TIMEOUT)
    out: dict[str, list[Binding]] = {}
    for row in rows:
        out.setdefault(row["xmtp_inbox_id"], []).append(_binding(row))
    return out


async def list_bindings(
    pool: asyncpg.Pool,
    protocol: str,
    *,
    after_did: str | None,
    after_uri: str | None = None,
    limit: int,
    status: str | None = None,
) -> list[Binding]:
    """One page of visible bindings of `protocol` (of one status, if given), ordered by (DID, URI),
    strictly after (`after_did`, `after_uri`); without `after_uri`, after every binding of `after_did`."""
    if protocol in ONE_RECORD_PROTOCOLS:  # the DID alone orders them, as its index does
        rows = await pool.fetch(_LIST_SQL, protocol, after_did or "", limit, status, timeout=QUERY_TIMEOUT)
    else:
        rows = await pool.fetch(
            _LIST_MANY_SQL, protocol, after_did or "", after_uri, limit, status, timeout=QUERY_TIMEOUT
        )
    return [_binding(row) for row in rows]


async def find_mls_device(pool: asyncpg.Pool, did: str, key: bytes, collections: Sequence[str]) -> Binding | None:
    """The valid device record of a visible account, in one of `collections`, that publishes
    `key` (in lookup form, records/keys.py), or None."""
    row = await pool.fetchrow(_MLS_DEVICE_SQL, did, key, list(collections), timeout=QUERY_TIMEOUT)
    return _binding(row) if row is not None else None


async def get_health(pool: asyncpg.Pool, *, stale_after: float = STALE_AFTER) -> Health:
    """The firehose state the indexer last reported, its cursor, lag and idle time.

    A report older than `stale_after` (or none) means no indexer is reporting: `disconnected`,
    with the age of the cursor's event as the lag (nothing newer can have been processed).
    """
    row = await pool.fetchrow(_HEALTH_SQL, timeout=QUERY_TIMEOUT)
    assert row is not None  # one row, whatever the tables hold
    idle = None if row["idle"] is None else max(0.0, row["idle"])
    if row["state"] is None or row["report_age"] > stale_after or row["state"] == "disconnected":
        age = None if row["event_age"] is None else max(0.0, row["event_age"])
        return Health(cursor=row["seq"], lag_seconds=age, state="disconnected", idle_seconds=idle)
    return Health(cursor=row["seq"], lag_seconds=row["lag_seconds"], state=row["state"], idle_seconds=idle)


async def get_index_counts(pool: asyncpg.Pool) -> IndexCounts:
    """What the index holds: visible counts as the API shows them, and hidden accounts' apart."""
    rows = await pool.fetch(_COUNTS_SQL, timeout=QUERY_TIMEOUT)
    accounts = hidden_accounts = hidden_bindings = 0
    bindings: dict[tuple[str, str], int] = {}
    for row in rows:
        if row["hidden"]:
            if row["protocol"] is None:
                hidden_accounts, hidden_bindings = row["accounts"], row["n"]
        elif row["protocol"] is None:
            accounts = row["accounts"]
        else:
            bindings[(row["protocol"], row["status"])] = row["n"]
    return IndexCounts(accounts, bindings, hidden_accounts, hidden_bindings)


async def did_of_handle(pool: asyncpg.Pool, handle: str) -> str | None:
    """The DID whose verified handle this is, among the accounts in the index (any status)."""
    did: str | None = await pool.fetchval(
        "SELECT did FROM accounts WHERE handle IS NOT NULL AND lower(handle) = $1 AND handle_verified "
        "ORDER BY did LIMIT 1",
        handle.lower(),
        timeout=QUERY_TIMEOUT,
    )
    return did


async def xmtp_binding_dids(pool: asyncpg.Pool, subject: str) -> list[str]:
    """The DIDs with an XMTP binding for a DID or an inbox ID (any status, any account status)."""
    rows = await pool.fetch(
        "SELECT DISTINCT did FROM bindings WHERE protocol = 'xmtp' AND xmtp_inbox_id IS NOT NULL "
        "AND (did = $1 OR xmtp_inbox_id = $1) ORDER BY did",
        subject,
        timeout=QUERY_TIMEOUT,
    )
    return [r["did"] for r in rows]


async def account_exists(pool: asyncpg.Pool, did: str) -> bool:
    found: bool = await pool.fetchval("SELECT EXISTS (SELECT 1 FROM accounts WHERE did = $1)", did)
    return found
