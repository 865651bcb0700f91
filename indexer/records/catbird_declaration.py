"""``blue.catbird.chat.declaration`` records: an account's opt-in to Catbird MLS chat, and how an
identity shows Catbird as one object (the declaration, the devices, the delivery service).

Catbird's clients fail closed: an `allowIncoming` they do not know, a `protocolVersion` other
than "1" or a `deliveryService` that is not a bare DID makes the record unusable, so atmx stores
it `invalid` with the reason rather than showing a policy no client would apply.

The delivery service follows the order Catbird's delivery services resolve it in: a usable
`#atproto_mls` service in the DID document, then a valid declaration's `deliveryService`, then
none (the legacy `blue.catbird.chat.profile` rung is not indexed; the default service is a
client setting, not something the account published).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from atmx.indexer.records.envelope import RecordError, check_envelope
from atmx.indexer.records.family import AccountContext, Checked, Family, Part
from atmx.indexer.records.stored import StoredBinding, text_field
from atmx.indexer.repo.syntax import is_datetime, is_did

__all__ = ["FAMILY", "NSID", "CatbirdDeclaration", "RecordError", "compose", "validate_catbird_declaration"]

NSID: Final = "blue.catbird.chat.declaration"
ALLOW_INCOMING: Final = frozenset({"all", "none", "following"})
PROTOCOL_VERSION: Final = "1"


@dataclass(frozen=True, slots=True)
class CatbirdDeclaration:
    allow_incoming: str
    delivery_service: str  # a DID without fragment
    protocol_version: str
    created_at: str


def validate_catbird_declaration(record: dict[str, Any], rkey: str) -> CatbirdDeclaration:
    """Check a ``blue.catbird.chat.declaration`` record (rkey ``self``); raises RecordError."""
    record = check_envelope(record, rkey, NSID, ("allowIncoming", "deliveryService", "protocolVersion", "createdAt"))
    allow = record["allowIncoming"]
    if type(allow) is not str or allow not in ALLOW_INCOMING:
        raise RecordError("bad_allow_incoming", "allowIncoming is not one of all, none, following")
    service = record["deliveryService"]
    # atproto DID syntax has no '#', so a DID URL with a fragment is refused here too
    if not is_did(service) or "#" in service:
        raise RecordError("bad_delivery_service", "deliveryService is not a DID without fragment")
    if record["protocolVersion"] != PROTOCOL_VERSION:
        raise RecordError("bad_protocol_version", f'protocolVersion is not "{PROTOCOL_VERSION}"')
    created_at = record["createdAt"]
    if not is_datetime(created_at):
        raise RecordError("bad_created_at", "createdAt is not an atproto datetime")
    return CatbirdDeclaration(allow, service, PROTOCOL_VERSION, created_at)


def _check(record: dict[str, Any], rkey: str) -> Checked:
    validate_catbird_declaration(record, rkey)
    return Checked("valid")


def _project(b: StoredBinding) -> dict[str, Any]:
    view: dict[str, Any] = {}
    for field in ("allowIncoming", "deliveryService", "protocolVersion"):
        value = text_field(b.record, field)
        if value is not None:
            view[field] = value
    return view


def compose(parts: Sequence[Part], account: AccountContext) -> dict[str, Any]:
    """The `catbird` object of an identity: its declaration (single family), its devices (the
    other families, legacy ones included and marked) and the delivery service."""
    declaration: Part | None = None
    devices: list[dict[str, Any]] = []
    for part in parts:
        if part.family.single:
            declaration = part
        else:
            devices.append(part.view)
    view: dict[str, Any] = {}
    if declaration is not None:
        view["declaration"] = declaration.view
    view["devices"] = devices
    if account.mls_endpoint is not None:
        view["deliveryService"] = {"source": "didDocument", "endpoint": account.mls_endpoint}
    elif declaration is not None and declaration.binding.status in ("valid", "verified"):
        service = text_field(declaration.binding.record, "deliveryService")
        if service is not None:
            view["deliveryService"] = {"source": "declaration", "did": service}
    return view


FAMILY: Final = Family(NSID, "catbird", single=True, validate=_check, project=_project, compose=compose)
