"""Apply a batch of write sets in one transaction: lock, read, plan (index/batch.py), write.

The accounts and bindings a batch touches are locked in one order (by DID, then by URI), read,
and handed to the pure planner; what it returns is written one statement kind at a time
(asyncpg's executemany), so a batch costs one round trip per kind of statement, not one per
event. The change log and the binding history are written in the same transaction as the
changes they record: a crash can neither announce a change that did not happen nor lose one
that did.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

import asyncpg

from atmx.indexer.index.batch import AccountRow, BatchPlan, Change, HistoryEntry, plan_batch
from atmx.indexer.index.writes import WriteSet
from atmx.indexer.records.stored import StoredBinding

__all__ = ["CHANGE_LOCK", "append_changes", "append_history", "apply_writes", "storable_text"]

# Transaction-scoped advisory lock taken right before change seqs are drawn: transactions that
# append changes then commit in seq order, so a stream reader never passes a seq that a slower
# transaction commits later.
CHANGE_LOCK: Final = 0x61746D78_0002

_CREATE_ACCOUNTS = """
INSERT INTO accounts (did) SELECT unnest($1::text[]) ON CONFLICT (did) DO NOTHING
"""

_LOCK_ACCOUNTS = """
SELECT did, rev, data_cid, active, status, handle, handle_verified
FROM accounts WHERE did = ANY($1::text[]) ORDER BY did FOR UPDATE
"""

_LOCK_BINDINGS = """
SELECT b.uri, b.did, b.collection, b.rkey, b.protocol, b.cid, b.rev, b.record, b.status, b.reason,
       b.xmtp_inbox_id, b.xmtp_env, b.xmtp_installation, b.created_at, b.indexed_at, b.verified_at
FROM bindings b WHERE b.uri = ANY($1::text[]) ORDER BY b.uri FOR UPDATE
"""

# TIDs sort lexicographically in time order, so `<` on text is rev order.
_SET_REPO_STATE = """
UPDATE accounts SET rev = $2, data_cid = $3, updated_at = now() WHERE did = $1 AND (rev IS NULL OR rev < $2)
"""

_SET_IDENTITY = """
UPDATE accounts SET handle = $2, handle_verified = $3, pds = coalesce($4, pds), handle_checked_at = now(),
    updated_at = now()
WHERE did = $1
"""

# A handle resolves to one DID at a time: verifying it for one account un-verifies it for every other.
_CLEAR_HANDLE = """
UPDATE accounts SET handle_verified = false, updated_at = now()
WHERE lower(handle) = lower($2) AND did <> $1 AND handle_verified
RETURNING did
"""

_SET_STATUS = """
UPDATE accounts SET active = $2, status = $3, updated_at = now() WHERE did = $1
"""

# The same record delivered again (a replay, a backfill) keeps the outcome of its XMTP
# check; a new record starts over and is due for checking at once.
_KEEP = "(bindings.cid = EXCLUDED.cid AND EXCLUDED.status = 'pending')"
_UPSERT_BINDING = f"""
INSERT INTO bindings (uri, did, collection, rkey, protocol, cid, rev, record, status, reason, xmtp_inbox_id,
                      created_at, key_bytes, indexed_at, xmtp_next_check)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, CASE WHEN $9 = 'pending' THEN now() END)
ON CONFLICT (uri) DO UPDATE SET
    cid = EXCLUDED.cid, rev = EXCLUDED.rev, record = EXCLUDED.record, protocol = EXCLUDED.protocol,
    xmtp_inbox_id = EXCLUDED.xmtp_inbox_id, created_at = EXCLUDED.created_at, key_bytes = EXCLUDED.key_bytes,
    indexed_at = EXCLUDED.indexed_at,
    status = CASE WHEN {_KEEP} THEN bindings.status ELSE EXCLUDED.status END,
    reason = CASE WHEN {_KEEP} THEN bindings.reason ELSE EXCLUDED.reason END,
    verified_at = CASE WHEN {_KEEP} THEN bindings.verified_at END,
    xmtp_env = CASE WHEN {_KEEP} THEN bindings.xmtp_env END,
    xmtp_installation = CASE WHEN {_KEEP} THEN bindings.xmtp_installation END,
    xmtp_checked_at = CASE WHEN {_KEEP} THEN bindings.xmtp_checked_at END,
    xmtp_next_check = CASE WHEN {_KEEP} THEN bindings.xmtp_next_check ELSE EXCLUDED.xmtp_next_check END,
    xmtp_attempts = CASE WHEN {_KEEP} THEN bindings.xmtp_attempts ELSE 0 END
WHERE bindings.rev < EXCLUDED.rev
"""

_SAVE_PROOF = """
INSERT INTO binding_proofs (uri, rev, car, signing_key, pds, observed_at) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (uri) DO UPDATE SET rev = EXCLUDED.rev, car = EXCLUDED.car, signing_key = EXCLUDED.signing_key,
    pds = EXCLUDED.pds, observed_at = EXCLUDED.observed_at
WHERE binding_proofs.rev < EXCLUDED.rev
"""

_DELETE_BINDING = "DELETE FROM bindings WHERE uri = $1 AND rev < $2"

# One row per (did, kind, reason, detail): a repeat counts, it does not add a row.
_INSERT_REJECTION = """
INSERT INTO rejections (did, seq, kind, reason, detail) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (did, kind, reason, md5(coalesce(detail, ''))) DO UPDATE SET
    count = rejections.count + 1, seq = EXCLUDED.seq, at = now()
"""

_QUEUE_RESYNC = """
INSERT INTO resync_queue (did, reason) VALUES ($1, $2)
ON CONFLICT (did) DO UPDATE SET reason = EXCLUDED.reason, queued_at = now()
"""

_LOCK_CHANGES = "SELECT pg_advisory_xact_lock($1)"
_APPEND_CHANGE = """
INSERT INTO changes (seq, did, kind, protocol, body) VALUES (nextval('change_seq'), $1, $2, $3, $4)
"""
_APPEND_HISTORY = """
INSERT INTO binding_history (did, uri, protocol, rev, cid, action, status, reason, projection)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""


def storable_text(value: str | None) -> str | None:
    """Details quote the wire (paths, parser messages); PostgreSQL text cannot hold U+0000."""
    return None if value is None else value.replace("\x00", "\ufffd")


async def apply_writes(conn: asyncpg.Connection, writes: Sequence[WriteSet], now: datetime) -> dict[str, str]:
    """Apply write sets (in order) inside the caller's transaction. Returns the repos whose stored
    rev is ahead of every repo state in the batch (another writer got further)."""
    if not writes:
        return {}
    creating = sorted({ws.did for ws in writes if ws.create_account or ws.upserts})
    if creating:
        await conn.execute(_CREATE_ACCOUNTS, creating)
    dids = sorted({ws.did for ws in writes})
    accounts = {
        r["did"]: AccountRow(r["rev"], r["data_cid"], r["active"], r["status"], r["handle"], r["handle_verified"])
        for r in await conn.fetch(_LOCK_ACCOUNTS, dids)
    }
    uris = sorted(
        {row.uri for ws in writes for row in ws.upserts} | {_uri(ws, d.path) for ws in writes for d in ws.deletes}
    )
    bindings = {}
    if uris:
        bindings = {r["uri"]: _stored(r, accounts.get(r["did"])) for r in await conn.fetch(_LOCK_BINDINGS, uris)}
    plan = plan_batch(writes, accounts, bindings, now=now)
    await _write(conn, plan, now)
    newest = {ws.did: ws.repo_state[0] for ws in writes if ws.repo_state is not None}
    return {
        did: acc.rev for did, acc in accounts.items() if acc.rev is not None and did in newest and acc.rev > newest[did]
    }


def _uri(ws: WriteSet, path: str) -> str:
    return f"at://{ws.did}/{path}"


def _stored(r: asyncpg.Record, account: AccountRow | None) -> StoredBinding:
    return StoredBinding(
        did=r["did"],
        collection=r["collection"],
        rkey=r["rkey"],
        protocol=r["protocol"],
        uri=r["uri"],
        cid=r["cid"],
        rev=r["rev"],
        record=r["record"],
        status=r["status"],
        reason=r["reason"],
        xmtp_inbox_id=r["xmtp_inbox_id"],
        xmtp_env=r["xmtp_env"],
        xmtp_installation=r["xmtp_installation"],
        created_at=r["created_at"],
        indexed_at=r["indexed_at"],
        verified_at=r["verified_at"],
        handle=account.shown_handle if account is not None else None,
    )


async def _write(conn: asyncpg.Connection, plan: BatchPlan, now: datetime) -> None:
    changes = list(plan.changes)
    for did, update in plan.identities:
        await conn.execute(_SET_IDENTITY, did, update.handle, update.handle_verified, update.pds)
        if update.handle_verified and update.handle is not None:
            for row in await conn.fetch(_CLEAR_HANDLE, did, update.handle):
                changes.append(Change(row["did"], "handle", {"did": row["did"], "handle": "handle.invalid"}))
    if plan.statuses:
        await conn.executemany(_SET_STATUS, [(d, s.active, s.status) for d, s in plan.statuses])
    if plan.upserts:
        await conn.executemany(
            _UPSERT_BINDING,
            [
                (
                    b.uri,
                    b.did,
                    b.collection,
                    b.rkey,
                    b.protocol,
                    b.cid,
                    b.rev,
                    b.record,
                    b.status,
                    b.reason,
                    b.xmtp_inbox_id,
                    b.created_at,
                    b.key,
                    now,
                )
                for _, b in plan.upserts
            ],
        )
        proofs = [
            (b.uri, b.rev, b.proof.car, b.proof.signing_key, b.proof.pds, now) for _, b in plan.upserts if b.proof
        ]
        if proofs:
            await conn.executemany(_SAVE_PROOF, [p for p in proofs if p[2]])
    if plan.deletes:
        await conn.executemany(_DELETE_BINDING, plan.deletes)
    if plan.repo_states:
        await conn.executemany(_SET_REPO_STATE, [(d, rev, data) for d, (rev, data) in plan.repo_states.items()])
    if plan.rejections:
        await conn.executemany(
            _INSERT_REJECTION,
            [(did, seq, r.kind, r.reason, storable_text(r.detail)) for did, seq, r in plan.rejections],
        )
    if plan.resyncs:
        await conn.executemany(_QUEUE_RESYNC, list(plan.resyncs.items()))
    await append_history(conn, plan.history)
    await append_changes(conn, changes)


async def append_history(conn: asyncpg.Connection, entries: Sequence[HistoryEntry]) -> None:
    if entries:
        await conn.executemany(
            _APPEND_HISTORY,
            [(h.did, h.uri, h.protocol, h.rev, h.cid, h.action, h.status, h.reason, h.projection) for h in entries],
        )


async def append_changes(conn: asyncpg.Connection, changes: Sequence[Change]) -> None:
    """Append to the change log; the last writes of a transaction (the lock is held to commit)."""
    if changes:
        await conn.execute(_LOCK_CHANGES, CHANGE_LOCK)
        await conn.executemany(_APPEND_CHANGE, [(c.did, c.kind, c.body.get("protocol"), c.body) for c in changes])


async def record_refused_write(conn: asyncpg.Connection, did: str, seq: int | None, error: Exception) -> None:
    """A write set the database refused: keep why, and queue the repo for a proof re-fetch."""
    detail = storable_text(f"{type(error).__name__}: {error}"[:500])
    await conn.execute(_INSERT_REJECTION, did, seq, "event", "store_error", detail)
    await conn.execute(_QUEUE_RESYNC, did, "store_error")
