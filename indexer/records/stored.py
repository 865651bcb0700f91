"""A binding as the index holds it: the one shape the API views and the change log read (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["StoredBinding", "iso_time", "text_field"]


@dataclass(frozen=True, slots=True)
class StoredBinding:
    did: str
    collection: str
    rkey: str
    protocol: str
    uri: str
    cid: str
    rev: str
    record: Any  # the record as published (atproto JSON form); may be malformed when status is invalid
    status: str
    reason: str | None
    xmtp_inbox_id: str | None
    xmtp_env: str | None
    xmtp_installation: str | None
    created_at: str | None
    indexed_at: datetime
    verified_at: datetime | None
    handle: str | None = None  # the account's handle, only when it resolves back to the DID


def iso_time(value: datetime) -> str:
    """The datetime format of every API answer: UTC, milliseconds, `Z`."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def text_field(record: Any, key: str) -> str | None:
    """A string field of a record that may be malformed."""
    value = record.get(key) if isinstance(record, dict) else None
    return value if isinstance(value, str) else None
