"""What processing one event changes in the index, as plain data (pure).

The pipeline and the backfill job build these; store.py applies them in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class BindingRow:
    protocol: str  # 'xmtp' | 'didcomm'
    uri: str
    cid: str
    rev: str
    record: dict[str, Any]
    status: str
    reason: str | None
    xmtp_inbox_id: str | None
    created_at: str | None


@dataclass(frozen=True, slots=True)
class IdentityUpdate:
    handle: str | None
    handle_verified: bool
    pds: str | None


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    active: bool
    status: str | None


@dataclass(frozen=True, slots=True)
class Rejection:
    kind: str
    reason: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class CursorUpdate:
    upstream: str
    seq: int
    event_time: datetime | None


@dataclass(slots=True)
class WriteSet:
    """Everything one event changes, applied atomically."""

    did: str
    seq: int | None = None
    create_account: bool = False
    repo_state: tuple[str, str] | None = None  # (rev, data_cid) of a verified commit
    identity: IdentityUpdate | None = None
    status: StatusUpdate | None = None
    upserts: list[BindingRow] = field(default_factory=list)
    deletes: list[tuple[str, str]] = field(default_factory=list)  # (protocol, rev)
    rejections: list[Rejection] = field(default_factory=list)
    resync_reason: str | None = None

    def is_empty(self) -> bool:
        return not (
            self.create_account
            or self.repo_state
            or self.identity
            or self.status
            or self.upserts
            or self.deletes
            or self.rejections
            or self.resync_reason
        )
