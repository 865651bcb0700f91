"""What processing one event changes in the index, as plain data (pure).

The decision core (decide.py) and the backfill fetcher build these; store/index_store.py
applies a batch of them in one transaction, after batch.py has worked out which of them
still apply and which changes they announce.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

# At most this many rejections are recorded per event: a commit of 200 ops naming indexed
# collections with bad record keys must not cost 200 rows (the rest are counted in one line).
MAX_REJECTIONS_PER_EVENT: Final = 8


@dataclass(frozen=True, slots=True)
class Proof:
    """How a binding was proven: a getRecord-shaped CAR, the key that signed its commit."""

    car: bytes
    signing_key: str | None  # did:key
    pds: str | None


@dataclass(frozen=True, slots=True)
class BindingRow:
    did: str
    collection: str
    rkey: str
    protocol: str  # xmtp | didcomm | germ | catbird
    cid: str
    rev: str
    record: dict[str, Any]
    status: str
    reason: str | None
    xmtp_inbox_id: str | None
    created_at: str | None
    key: bytes | None = None  # a public key the record publishes (Germ, Catbird devices)
    proof: Proof | None = None

    @property
    def path(self) -> str:
        return f"{self.collection}/{self.rkey}"

    @property
    def uri(self) -> str:
        return f"at://{self.did}/{self.collection}/{self.rkey}"


@dataclass(frozen=True, slots=True)
class RecordDelete:
    """A record proven absent at `rev` (a delete op, or a getRecord proof of absence)."""

    collection: str
    rkey: str
    rev: str

    @property
    def path(self) -> str:
        return f"{self.collection}/{self.rkey}"


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
    """Everything one event (or one proof fetch) changes, applied atomically."""

    did: str
    seq: int | None = None
    create_account: bool = False
    repo_state: tuple[str, str] | None = None  # (rev, data_cid) of a verified commit or proof
    identity: IdentityUpdate | None = None
    status: StatusUpdate | None = None
    upserts: list[BindingRow] = field(default_factory=list)
    deletes: list[RecordDelete] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    resync_reason: str | None = None

    def reject(self, rejection: Rejection) -> None:
        """Record a rejection, at most MAX_REJECTIONS_PER_EVENT of them (the last one says how many more)."""
        if len(self.rejections) < MAX_REJECTIONS_PER_EVENT - 1:
            self.rejections.append(rejection)
            return
        if len(self.rejections) == MAX_REJECTIONS_PER_EVENT - 1:
            self.rejections.append(Rejection(rejection.kind, "more_rejections", "1 more"))
            return
        last = self.rejections[-1]
        more = int((last.detail or "0").split()[0]) + 1
        self.rejections[-1] = Rejection(last.kind, "more_rejections", f"{more} more")

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
