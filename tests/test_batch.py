"""indexer/index/batch.py: which writes of a batch still apply, and which changes they announce (pure)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from stored_samples import binding

from atmx.indexer.index.batch import AccountRow, plan_batch
from atmx.indexer.index.writes import (
    BindingRow,
    IdentityUpdate,
    RecordDelete,
    Rejection,
    StatusUpdate,
    WriteSet,
)
from atmx.indexer.records.stored import StoredBinding

NOW = datetime(2026, 11, 1, tzinfo=UTC)
DID = "did:plc:x"  # stored_samples' account
URI = f"at://{DID}/org.xmtp.inbox/self"
RECORD = {"id": "a" * 64, "verificationSignature": "c2ln", "createdAt": "2026-11-01T00:00:00Z"}


def row(rev: str, cid: str = "bafyone", status: str = "pending") -> BindingRow:
    return BindingRow(DID, "org.xmtp.inbox", "self", "xmtp", cid, rev, RECORD, status, None, "a" * 64, None)


def stored(rev: str, cid: str = "bafyone", status: str = "verified") -> StoredBinding:
    return replace(binding(), rev=rev, cid=cid, status=status, xmtp_env="production", verified_at=NOW)


def test_a_new_account_and_binding_are_created_and_announced() -> None:
    ws = WriteSet(did=DID, seq=7, create_account=True, repo_state=("3kb", "bafydata"), upserts=[row("3kb")])
    plan = plan_batch([ws], {}, {}, now=NOW)
    assert plan.create_accounts == [DID]
    assert plan.upserts == [(7, ws.upserts[0])]
    assert plan.repo_states == {DID: ("3kb", "bafydata")}
    assert [(c.kind, c.body["action"], c.body["status"]) for c in plan.changes] == [("binding", "create", "pending")]
    assert [(h.action, h.status) for h in plan.history] == [("create", "pending")]


def test_writes_older_than_the_last_verified_commit_are_dropped() -> None:
    ws = WriteSet(did=DID, upserts=[row("3ka")], deletes=[RecordDelete("org.xmtp.inbox", "self", "3ka")])
    plan = plan_batch([ws], {DID: AccountRow(rev="3kc", data_cid="bafy")}, {URI: stored("3kb")}, now=NOW)
    assert plan.upserts == [] and plan.deletes == [] and plan.changes == []


def test_the_repo_state_only_moves_forward() -> None:
    back = WriteSet(did=DID, repo_state=("3ka", "bafyold"))
    assert plan_batch([back], {DID: AccountRow(rev="3kc")}, {}, now=NOW).repo_states == {}


def test_the_same_record_again_keeps_its_check_and_announces_nothing() -> None:
    plan = plan_batch(
        [WriteSet(did=DID, upserts=[row("3kc")])], {DID: AccountRow(rev="3kb")}, {URI: stored("3kb")}, now=NOW
    )
    assert len(plan.upserts) == 1  # the newer rev is written...
    assert plan.changes == [] and plan.history == []  # ...but nothing a reader sees changed


def test_a_new_record_starts_its_check_again() -> None:
    stored_before = {URI: stored("3kb")}
    plan = plan_batch(
        [WriteSet(did=DID, upserts=[row("3kc", cid="bafytwo")])], {DID: AccountRow(rev="3kb")}, stored_before, now=NOW
    )
    assert [(c.body["action"], c.body["status"]) for c in plan.changes] == [("update", "pending")]


def test_delete() -> None:
    ws = WriteSet(did=DID, deletes=[RecordDelete("org.xmtp.inbox", "self", "3kc")])
    account = AccountRow(rev="3kb", handle="alice.test", handle_verified=True)
    plan = plan_batch([ws], {DID: account}, {URI: stored("3kb")}, now=NOW)
    assert plan.deletes == [(URI, "3kc")]
    assert plan.changes[0].body == {
        "did": DID,
        "protocol": "xmtp",
        "uri": URI,
        "rev": "3kc",
        "action": "delete",
        "status": "deleted",
        "handle": "alice.test",
    }
    gone_twice = plan_batch([ws, ws], {DID: account}, {URI: stored("3kb")}, now=NOW)
    assert len(gone_twice.deletes) == 1  # the binding is already gone for the second


def test_handle_and_status_changes_are_announced_once() -> None:
    account = AccountRow(handle="old.test", handle_verified=True)
    moved = WriteSet(did=DID, identity=IdentityUpdate("new.test", True, None))
    unverified = WriteSet(did=DID, identity=IdentityUpdate("new.test", False, None))
    down = WriteSet(did=DID, status=StatusUpdate(False, "takendown"))
    again = WriteSet(did=DID, status=StatusUpdate(False, "takendown"))
    plan = plan_batch([moved, unverified, down, again], {DID: account}, {}, now=NOW)
    assert [c.body for c in plan.changes] == [
        {"did": DID, "handle": "new.test"},
        {"did": DID, "handle": "handle.invalid"},
        {"did": DID, "active": False, "accountStatus": "takendown"},
    ]
    assert len(plan.statuses) == 2 and len(plan.identities) == 2


def test_unknown_accounts_keep_only_their_notes() -> None:
    ws = WriteSet(did="did:plc:stranger", seq=3, rejections=[Rejection("commit", "bad_signature")])
    ws.resync_reason = "missed_commit"
    ws.status = StatusUpdate(False, "deactivated")
    plan = plan_batch([ws], {}, {}, now=NOW)
    assert plan.rejections == [("did:plc:stranger", 3, Rejection("commit", "bad_signature"))]
    assert plan.resyncs == {"did:plc:stranger": "missed_commit"}
    assert plan.statuses == [] and plan.create_accounts == []
