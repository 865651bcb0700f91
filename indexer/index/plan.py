"""A record proven to be at a path of a repo -> the binding row atmx stores (pure).

Shared by the firehose decisions and the backfill fetcher, so both judge records the same way.
A record that cannot be decoded, is too deep, carries U+0000 or fails its family's checks is
still a row: `invalid`, with the reason. That row replaces whatever the path held before, so a
poisoned update can never leave the previous binding served as current.
"""

from __future__ import annotations

from typing import Any, Final

from atmx.indexer.index.writes import BindingRow, Proof, Rejection
from atmx.indexer.records import limits
from atmx.indexer.records.envelope import RecordError
from atmx.indexer.records.registry import BY_COLLECTION, split_path
from atmx.indexer.repo.car import VerificationError
from atmx.indexer.repo.syntax import is_record_key
from atmx.indexer.repo.verify import decode_record

__all__ = ["RecordOutcome", "plan_record"]

_DAG_CBOR_CID_PREFIX: Final = "bafyrei"  # CIDv1 dag-cbor sha2-256 in base32: what a record CID must be

# (protocol, reason or "ok"): what the caller counts in atmx_records_total
RecordOutcome = tuple[str, str]


def plan_record(
    did: str, rev: str, path: str, cid: str, block: bytes | None, proof: Proof | None = None
) -> tuple[BindingRow | Rejection, RecordOutcome]:
    """The row for the record `block` (CID `cid`) proven at `path` in `did`'s repo at `rev`.

    A Rejection (not a row) only for a path that cannot hold a binding: a record key the
    family does not allow. `block` None means the proof named the record but did not carry it.
    """
    collection, rkey = split_path(path)
    family = BY_COLLECTION.get(collection)
    if family is None:
        raise ValueError(f"{path} is not an indexed collection")
    if (family.single and rkey != "self") or not is_record_key(rkey):
        return Rejection("record", "bad_rkey", path[:600]), (family.protocol, "bad_rkey")

    def row(record: dict[str, Any], status: str, reason: str | None, inbox: str | None = None) -> BindingRow:
        created_at = record.get("createdAt")
        return BindingRow(
            did=did,
            collection=collection,
            rkey=rkey,
            protocol=family.protocol,
            cid=cid,
            rev=rev,
            record=record,
            status=status,
            reason=reason,
            xmtp_inbox_id=inbox,
            created_at=created_at if type(created_at) is str and "\x00" not in created_at else None,
            key=key,
            proof=proof,
        )

    key: bytes | None = None
    if block is None:
        return row({}, "invalid", "missing_block"), (family.protocol, "missing_block")
    if not cid.startswith(_DAG_CBOR_CID_PREFIX):
        return row({}, "invalid", "bad_record"), (family.protocol, "bad_record")
    try:
        record = decode_record(block)
    except VerificationError as exc:  # record_too_large, bad_record
        return row({}, "invalid", exc.reason), (family.protocol, exc.reason)
    shape = limits.scan(record)
    if shape == "too_deep":
        # not stored: nothing downstream should walk it
        return row({}, "invalid", "too_deep"), (family.protocol, "too_deep")
    status, reason, inbox = "invalid", None, None
    try:
        checked = family.validate(record, rkey)
    except RecordError as exc:
        reason = exc.reason
    else:
        status, inbox, key = checked.status, checked.inbox_id, checked.key
    if shape == "nul_character":
        # PostgreSQL text and jsonb cannot hold U+0000: keep the row (so the record is not served
        # as what it replaced) but invalid, with the NULs replaced in the stored copy
        record = limits.without_nul(record)
        status, reason, inbox, key = "invalid", reason or "nul_character", None, None
    return row(record, status, reason, inbox), (family.protocol, reason or "ok")
