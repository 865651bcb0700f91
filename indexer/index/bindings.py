"""Turn a proven record into the binding row atmx stores (pure).

Shared by the firehose pipeline and the backfill job, so both judge records the same way.
"""

from __future__ import annotations

from typing import Any

from atmx.indexer import metrics
from atmx.indexer.index.writes import BindingRow, Rejection
from atmx.indexer.records import RecordError
from atmx.indexer.records.didcomm_keypackage import validate_didcomm_keypackage
from atmx.indexer.records.xmtp_inbox import validate_xmtp_inbox

PROTOCOL_BY_COLLECTION = {"org.xmtp.inbox": "xmtp", "at.didcomm.keyPackage": "didcomm"}
COLLECTION_BY_PROTOCOL = {v: k for k, v in PROTOCOL_BY_COLLECTION.items()}


def protocol_of(path: str) -> tuple[str | None, str]:
    """(protocol, rkey) for a repo path; protocol is None outside the indexed collections."""
    collection, _, rkey = path.partition("/")
    return PROTOCOL_BY_COLLECTION.get(collection), rkey


def plan_binding(did: str, rev: str, path: str, cid: str, record: dict[str, Any]) -> BindingRow | Rejection:
    """The row for a record proven to be at `path` in `did`'s repo at `rev`."""
    protocol, rkey = protocol_of(path)
    if protocol is None:
        raise ValueError(f"{path} is not an indexed collection")
    if rkey != "self":
        # both record kinds are single records at rkey "self"
        metrics.RECORDS.labels(protocol, "bad_rkey").inc()
        return Rejection("record", "bad_rkey", path)
    reason: str | None = None
    inbox_id: str | None = None
    if protocol == "xmtp":
        try:
            inbox = validate_xmtp_inbox(record, rkey)
        except RecordError as exc:
            status, reason = "invalid", exc.reason
        else:
            # repo-verified; the XMTP stage decides verified/invalid/unverifiable
            status, inbox_id = "pending", inbox.inbox_id
    else:
        try:
            validate_didcomm_keypackage(record, rkey)
        except RecordError as exc:
            status, reason = "invalid", exc.reason
        else:
            status = "valid"
    if _has_nul(record):
        # PostgreSQL text and jsonb cannot hold U+0000: keep the row (so the record is not
        # served as what it replaced) but invalid, with the NULs replaced in the stored copy
        record = _without_nul(record)
        status, reason, inbox_id = "invalid", reason or "nul_character", None
    metrics.RECORDS.labels(protocol, reason or "ok").inc()
    created_at = record.get("createdAt")
    return BindingRow(
        protocol=protocol,
        uri=f"at://{did}/{path}",
        cid=cid,
        rev=rev,
        record=record,
        status=status,
        reason=reason,
        xmtp_inbox_id=inbox_id,
        created_at=created_at if isinstance(created_at, str) else None,
    )


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value
