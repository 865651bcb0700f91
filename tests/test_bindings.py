from __future__ import annotations

import base64

from atmx.indexer.index.bindings import plan_binding, protocol_of
from atmx.indexer.index.writes import BindingRow, Rejection

DID = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"
GOOD_XMTP = {
    "id": "ab" * 32,
    "verificationSignature": base64.b64encode(bytes(64)).decode(),
    "createdAt": "2026-01-01T00:00:00Z",
}


def test_protocol_of() -> None:
    assert protocol_of("org.xmtp.inbox/self") == ("xmtp", "self")
    assert protocol_of("at.didcomm.keyPackage/x") == ("didcomm", "x")
    assert protocol_of("app.bsky.feed.post/3k") == (None, "3k")


def test_valid_xmtp_record_is_pending_with_its_inbox() -> None:
    row = plan_binding(DID, "3kaaaaaaaaa22", "org.xmtp.inbox/self", "bafyx", GOOD_XMTP)
    assert isinstance(row, BindingRow)
    assert (row.status, row.reason, row.xmtp_inbox_id) == ("pending", None, "ab" * 32)
    assert row.uri == f"at://{DID}/org.xmtp.inbox/self" and row.created_at == GOOD_XMTP["createdAt"]


def test_invalid_record_keeps_its_reason_and_no_inbox() -> None:
    row = plan_binding(DID, "3k", "org.xmtp.inbox/self", "bafyx", {**GOOD_XMTP, "id": "nothex"})
    assert isinstance(row, BindingRow)
    assert (row.status, row.reason, row.xmtp_inbox_id) == ("invalid", "bad_inbox_id", None)
    row = plan_binding(DID, "3k", "at.didcomm.keyPackage/self", "bafyx", {"did": "did:web:x"})
    assert isinstance(row, BindingRow) and row.status == "invalid" and row.reason


def test_other_rkeys_are_refused() -> None:
    planned = plan_binding(DID, "3k", "org.xmtp.inbox/3kabc", "bafyx", GOOD_XMTP)
    assert planned == Rejection("record", "bad_rkey", "org.xmtp.inbox/3kabc")


def test_records_with_nul_characters_are_kept_invalid_and_storable() -> None:
    record = {**GOOD_XMTP, "note": "a\x00b", "nested": [{"k\x00": "v"}]}
    row = plan_binding(DID, "3k", "org.xmtp.inbox/self", "bafyx", record)
    assert isinstance(row, BindingRow)
    assert (row.status, row.reason, row.xmtp_inbox_id) == ("invalid", "nul_character", None)
    assert row.record["note"] == "a\ufffdb" and row.record["nested"] == [{"k\ufffd": "v"}]
    # a record already invalid for another reason keeps that reason
    row = plan_binding(DID, "3k", "org.xmtp.inbox/self", "bafyx", {**GOOD_XMTP, "id": "x\x00"})
    assert isinstance(row, BindingRow) and row.reason == "bad_inbox_id" and "\x00" not in row.record["id"]
