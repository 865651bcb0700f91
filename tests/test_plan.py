"""index/plan.py: a proven record block -> the binding row (or a rejection), table-driven."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cbrrr import CID, encode_dag_cbor

from atmx.indexer.index.plan import plan_record
from atmx.indexer.index.writes import BindingRow, Rejection
from atmx.indexer.repo.verify import MAX_RECORD_SIZE

DID = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"
REV = "3kaaaaaaaaa22"
GOOD_XMTP = {
    "$type": "org.xmtp.inbox",
    "id": "ab" * 32,
    "verificationSignature": base64.b64encode(bytes(64)).decode(),
    "createdAt": "2026-01-01T00:00:00Z",
}


def block_of(record: Any) -> tuple[str, bytes]:
    block = encode_dag_cbor(record, atjson_mode=True) if not isinstance(record, bytes) else record
    return CID.cidv1_dag_cbor_sha256_32_from(block).encode(), block


def plan(path: str, record: Any) -> tuple[BindingRow | Rejection, tuple[str, str]]:
    cid, block = block_of(record)
    return plan_record(DID, REV, path, cid, block)


def test_valid_xmtp_record_is_pending_with_its_inbox() -> None:
    row, outcome = plan("org.xmtp.inbox/self", GOOD_XMTP)
    assert isinstance(row, BindingRow) and outcome == ("xmtp", "ok")
    assert (row.status, row.reason, row.xmtp_inbox_id) == ("pending", None, "ab" * 32)
    assert row.uri == f"at://{DID}/org.xmtp.inbox/self" and row.created_at == GOOD_XMTP["createdAt"]
    assert (row.collection, row.rkey, row.protocol, row.rev) == ("org.xmtp.inbox", "self", "xmtp", REV)


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"k": value}
    return value


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({**GOOD_XMTP, "id": "nothex"}, "bad_inbox_id"),
        ({**GOOD_XMTP, "deep": nested(40)}, "too_deep"),
        ({**GOOD_XMTP, "note": "a\x00b"}, "nul_character"),
        ({**GOOD_XMTP, "id": "x\x00"}, "bad_inbox_id"),  # an earlier reason wins over the NUL
        (b"\xa1", "bad_record"),  # not DAG-CBOR
        (encode_dag_cbor([1, 2]), "bad_record"),  # not a map
        (encode_dag_cbor({"x": "a" * (MAX_RECORD_SIZE + 1)}), "record_too_large"),
    ],
)
def test_every_bad_record_is_an_invalid_row_with_its_reason(record: Any, reason: str) -> None:
    row, outcome = plan("org.xmtp.inbox/self", record)
    assert isinstance(row, BindingRow), "a bad record still replaces what the path held"
    assert (row.status, row.reason, row.xmtp_inbox_id) == ("invalid", reason, None)
    assert outcome == ("xmtp", reason)


def test_the_stored_copy_of_a_nul_record_is_storable() -> None:
    row, _ = plan("org.xmtp.inbox/self", {**GOOD_XMTP, "note": "a\x00b", "nested": [{"k\x00": "v"}]})
    assert isinstance(row, BindingRow)
    assert row.record["note"] == "a\ufffdb" and row.record["nested"] == [{"k\ufffd": "v"}]


def test_a_missing_or_raw_block_is_invalid() -> None:
    row, _ = plan_record(DID, REV, "org.xmtp.inbox/self", block_of(GOOD_XMTP)[0], None)
    assert isinstance(row, BindingRow) and row.reason == "missing_block"
    row, _ = plan_record(DID, REV, "org.xmtp.inbox/self", "bafkreiaaaa", b"\xa0")
    assert isinstance(row, BindingRow) and row.reason == "bad_record"


@pytest.mark.parametrize("path", ["org.xmtp.inbox/3kabc", "at.didcomm.keyPackage/other", "org.xmtp.inbox/.."])
def test_a_record_key_the_family_does_not_allow_is_a_rejection(path: str) -> None:
    planned, outcome = plan(path, GOOD_XMTP)
    assert isinstance(planned, Rejection) and (planned.kind, planned.reason) == ("record", "bad_rkey")
    assert outcome[1] == "bad_rkey"


def test_an_unindexed_path_is_a_caller_error() -> None:
    with pytest.raises(ValueError):
        plan("app.bsky.feed.post/3k", GOOD_XMTP)
