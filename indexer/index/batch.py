"""Which writes of a batch still apply, and which changes they announce (pure).

The store locks the accounts and bindings a batch touches, reads them, and asks `plan_batch`
what to write: the result is exact (nothing else can write those rows until the transaction
ends), so the change log and the binding history record only what really changed.

Rules, applied in the batch's order (seq order for the firehose):
- a repo state (rev, MST root) moves forward only;
- a binding write or delete older than the account's last verified commit is dropped (a proof
  fetched by the backfill raced a newer live commit, or the other way round);
- a binding changes only for a newer rev; the same record delivered again (a replay, a proof
  of what is already there) keeps the outcome of its XMTP check;
- a change is announced when what the API shows changes: a binding's record, status or
  reason; an account's status; the handle an account is shown with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from atmx.indexer.index.writes import BindingRow, IdentityUpdate, Rejection, StatusUpdate, WriteSet
from atmx.indexer.records.stored import StoredBinding
from atmx.indexer.records.view import binding_view

__all__ = ["AccountRow", "BatchPlan", "Change", "HistoryEntry", "plan_batch"]


@dataclass(slots=True)
class AccountRow:
    """An account as stored (None fields for one this batch creates)."""

    rev: str | None = None
    data_cid: str | None = None
    active: bool = True
    status: str | None = None
    handle: str | None = None
    handle_verified: bool = False

    @property
    def shown_handle(self) -> str | None:
        return self.handle if self.handle_verified else None


@dataclass(frozen=True, slots=True)
class Change:
    """One message of the change stream, without its seq and time (the log assigns both)."""

    did: str
    kind: str  # binding | account | handle
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    did: str
    uri: str
    protocol: str
    rev: str
    cid: str | None
    action: str  # create | update | delete | verdict
    status: str
    reason: str | None
    projection: dict[str, Any] | None


@dataclass(slots=True)
class BatchPlan:
    create_accounts: list[str] = field(default_factory=list)
    identities: list[tuple[str, IdentityUpdate]] = field(default_factory=list)
    statuses: list[tuple[str, StatusUpdate]] = field(default_factory=list)
    upserts: list[tuple[int | None, BindingRow]] = field(default_factory=list)  # (seq, row)
    deletes: list[tuple[str, str]] = field(default_factory=list)  # (uri, rev)
    repo_states: dict[str, tuple[str, str]] = field(default_factory=dict)  # did -> (rev, data_cid)
    rejections: list[tuple[str, int | None, Rejection]] = field(default_factory=list)  # (did, seq, r)
    resyncs: dict[str, str] = field(default_factory=dict)  # did -> reason
    changes: list[Change] = field(default_factory=list)
    history: list[HistoryEntry] = field(default_factory=list)


def plan_batch(
    writes: Sequence[WriteSet],
    accounts: Mapping[str, AccountRow],
    bindings: Mapping[str, StoredBinding],
    *,
    now: datetime,
) -> BatchPlan:
    """`accounts` and `bindings` as stored (locked); returns what to write and what it announces."""
    plan = BatchPlan()
    accs = {did: dataclasses.replace(a) for did, a in accounts.items()}
    current: dict[str, StoredBinding | None] = dict(bindings)
    for ws in writes:
        acc = accs.get(ws.did)
        if acc is None and (ws.create_account or ws.upserts):
            acc = accs[ws.did] = AccountRow()
            plan.create_accounts.append(ws.did)
        if acc is None:
            # an account the index does not hold: only its rejections and repairs are kept
            _keep_notes(plan, ws)
            continue
        if ws.identity is not None:
            _identity(plan, ws.did, acc, ws.identity)
        if ws.status is not None:
            _status(plan, ws.did, acc, ws.status)
        floor = acc.rev  # writes older than the last verified commit are stale
        for row in ws.upserts:
            if floor is None or row.rev >= floor:
                _upsert(plan, current, acc, ws.seq, row, now)
        for delete in ws.deletes:
            if floor is None or delete.rev >= floor:
                _delete(plan, current, acc, f"at://{ws.did}/{delete.path}", delete.rev)
        if ws.repo_state is not None and (acc.rev is None or ws.repo_state[0] > acc.rev):
            acc.rev, acc.data_cid = ws.repo_state
            plan.repo_states[ws.did] = ws.repo_state
        _keep_notes(plan, ws)
    return plan


def _keep_notes(plan: BatchPlan, ws: WriteSet) -> None:
    plan.rejections.extend((ws.did, ws.seq, r) for r in ws.rejections)
    if ws.resync_reason is not None:
        plan.resyncs[ws.did] = ws.resync_reason


def _identity(plan: BatchPlan, did: str, acc: AccountRow, update: IdentityUpdate) -> None:
    before = acc.shown_handle
    acc.handle, acc.handle_verified = update.handle, update.handle_verified
    plan.identities.append((did, update))
    if acc.shown_handle != before:
        plan.changes.append(Change(did, "handle", {"did": did, "handle": acc.shown_handle or "handle.invalid"}))


def _status(plan: BatchPlan, did: str, acc: AccountRow, update: StatusUpdate) -> None:
    changed = (acc.active, acc.status) != (update.active, update.status)
    acc.active, acc.status = update.active, update.status
    plan.statuses.append((did, update))
    if changed:
        body = {"did": did, "active": update.active, "accountStatus": update.status or "active"}
        plan.changes.append(Change(did, "account", body))


def _upsert(
    plan: BatchPlan,
    current: dict[str, StoredBinding | None],
    acc: AccountRow,
    seq: int | None,
    row: BindingRow,
    now: datetime,
) -> None:
    uri = row.uri
    old = current.get(uri)
    if old is not None and old.rev >= row.rev:
        return
    plan.upserts.append((seq, row))
    keep = old is not None and old.cid == row.cid and row.status == "pending"  # same record: keep its check
    new = StoredBinding(
        did=row.did,
        collection=row.collection,
        rkey=row.rkey,
        protocol=row.protocol,
        uri=uri,
        cid=row.cid,
        rev=row.rev,
        record=row.record,
        status=old.status if keep and old is not None else row.status,
        reason=old.reason if keep and old is not None else row.reason,
        xmtp_inbox_id=row.xmtp_inbox_id,
        xmtp_env=old.xmtp_env if keep and old is not None else None,
        xmtp_installation=old.xmtp_installation if keep and old is not None else None,
        created_at=row.created_at,
        indexed_at=now,
        verified_at=old.verified_at if keep and old is not None else None,
        handle=acc.shown_handle,
    )
    current[uri] = new
    if old is not None and (old.cid, old.status, old.reason) == (new.cid, new.status, new.reason):
        return  # the same record at a newer rev: nothing a reader sees has changed
    action = "create" if old is None else "update"
    _announce(plan, new, row.rev, action)


def _delete(plan: BatchPlan, current: dict[str, StoredBinding | None], acc: AccountRow, uri: str, rev: str) -> None:
    old = current.get(uri)
    if old is None or old.rev >= rev:
        return
    plan.deletes.append((uri, rev))
    current[uri] = None
    body: dict[str, Any] = {
        "did": old.did,
        "protocol": old.protocol,
        "uri": uri,
        "rev": rev,
        "action": "delete",
        "status": "deleted",
    }
    if acc.shown_handle is not None:
        body["handle"] = acc.shown_handle
    plan.changes.append(Change(old.did, "binding", body))
    plan.history.append(HistoryEntry(old.did, uri, old.protocol, rev, None, "delete", "deleted", None, None))


def _announce(plan: BatchPlan, b: StoredBinding, rev: str, action: str) -> None:
    plan.changes.append(Change(b.did, "binding", binding_change(b, rev, action)))
    plan.history.append(HistoryEntry(b.did, b.uri, b.protocol, rev, b.cid, action, b.status, b.reason, binding_view(b)))


def binding_change(b: StoredBinding, rev: str, action: str) -> dict[str, Any]:
    """The `#binding` message body for a binding as it now stands."""
    body: dict[str, Any] = {
        "did": b.did,
        "protocol": b.protocol,
        "uri": b.uri,
        "cid": b.cid,
        "rev": rev,
        "action": action,
        "status": b.status,
    }
    if b.handle is not None:
        body["handle"] = b.handle
    if b.reason is not None:
        body["reason"] = b.reason
    body["binding"] = binding_view(b)
    return body
