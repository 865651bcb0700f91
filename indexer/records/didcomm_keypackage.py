"""``at.didcomm.keyPackage`` records: the DIDComm (did:peer:2) identity an account publishes.

Checked against the published lexicon (tests/fixtures/lexicons/at.didcomm.keyPackage.json),
plus what makes the record usable: ``did`` must be a did:peer:2 whose key list holds at least
one X25519 key-agreement key, since that is the key senders encrypt to.
"""

from __future__ import annotations

import binascii
import json
import re
from base64 import urlsafe_b64decode
from dataclasses import dataclass
from typing import Any, Final

import grapheme

from atmx.indexer.records.envelope import RecordError, check_envelope
from atmx.indexer.records.family import Checked, Family
from atmx.indexer.records.stored import StoredBinding, text_field
from atmx.indexer.repo.crypto import Base58Error, decode_base58btc
from atmx.indexer.repo.syntax import is_datetime, is_did

__all__ = [
    "FAMILY",
    "NSID",
    "DidcommKeyPackage",
    "RecordError",
    "peer2_keyagreement_keys",
    "validate_didcomm_keypackage",
]

NSID: Final = "at.didcomm.keyPackage"
MAX_MEDIATORS: Final = 16  # the lexicon sets no maximum; this keeps one record's cost bounded
MAX_LABEL_BYTES: Final = 640  # lexicon maxLength, which atproto counts in UTF-8 bytes
MAX_LABEL_GRAPHEMES: Final = 64

_PEER2_PREFIX: Final = "did:peer:2."
# did:peer:2 purpose codes: A assertion, E key agreement, V authentication, I capability
# invocation, D capability delegation (all multibase keys), S service (base64url JSON).
_KEY_PURPOSES: Final = frozenset("AEVID")
_X25519_PREFIX: Final = b"\xec\x01"  # multicodec x25519-pub (0xec) as a varint
_BASE64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class DidcommKeyPackage:
    did: str  # did:peer:2 ...
    mediators: tuple[str, ...]
    label: str | None
    created_at: str
    keyagreement_keys: tuple[bytes, ...]  # raw 32-byte X25519 public keys from the E elements


def validate_didcomm_keypackage(record: dict[str, Any], rkey: str) -> DidcommKeyPackage:
    """Check an ``at.didcomm.keyPackage`` record (rkey ``self``); raises RecordError."""
    record = check_envelope(record, rkey, NSID, ("did", "mediators", "createdAt"))

    did = record["did"]
    keys = peer2_keyagreement_keys(did)
    mediators = _mediators(record["mediators"])
    label = _label(record["label"]) if "label" in record else None
    created_at = record["createdAt"]
    if not is_datetime(created_at):
        raise RecordError("bad_created_at", "createdAt is not an atproto datetime")
    return DidcommKeyPackage(did, mediators, label, created_at, keys)


def peer2_keyagreement_keys(did: object) -> tuple[bytes, ...]:
    """The X25519 key-agreement keys of a did:peer:2; RecordError unless there is at least one.

    Every element is decoded, so a malformed element anywhere makes the DID ``bad_did``.
    """
    if type(did) is not str or not is_did(did) or not did.startswith(_PEER2_PREFIX):
        raise RecordError("bad_did", "did is not a did:peer:2")
    keys: list[bytes] = []
    for element in did[len(_PEER2_PREFIX) :].split("."):
        purpose, encoded = element[:1], element[1:]
        if purpose == "S":
            _check_service(encoded)
            continue
        if purpose not in _KEY_PURPOSES or not encoded.startswith("z"):
            raise RecordError("bad_did", f"did:peer:2 element {element[:16]!r}... is not a multibase key")
        try:
            key = decode_base58btc(encoded)
        except Base58Error:
            raise RecordError("bad_did", "did:peer:2 key is not base58btc") from None
        if len(key) < 3:
            raise RecordError("bad_did", "did:peer:2 key is too short to hold a multicodec key")
        if purpose == "E" and key.startswith(_X25519_PREFIX) and len(key) == 34:
            keys.append(key[2:])
    if not keys:
        raise RecordError("no_x25519_key", "did:peer:2 has no X25519 key-agreement (E) key")
    return tuple(keys)


def _check_service(encoded: str) -> None:
    # Services are base64url JSON without padding (one object, or a list in some encoders).
    if _BASE64URL_RE.fullmatch(encoded) is None or len(encoded) % 4 == 1:
        raise RecordError("bad_did", "did:peer:2 service is not base64url")
    try:
        service = json.loads(urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        raise RecordError("bad_did", "did:peer:2 service is not base64url JSON") from None
    if not isinstance(service, dict | list):
        raise RecordError("bad_did", "did:peer:2 service is not a JSON object")


def _mediators(value: object) -> tuple[str, ...]:
    if type(value) is not list or not 1 <= len(value) <= MAX_MEDIATORS:
        raise RecordError("bad_mediators", f"mediators must be a list of 1 to {MAX_MEDIATORS} DIDs")
    for mediator in value:
        if not is_did(mediator):
            raise RecordError("bad_mediators", "mediators holds something that is not a DID")
    return tuple(value)


def _label(value: object) -> str:
    if type(value) is not str:
        raise RecordError("bad_label", "label is not a string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates cannot come from CBOR, but can from callers
        raise RecordError("bad_label", "label is not valid Unicode") from None
    if size > MAX_LABEL_BYTES or grapheme.length(value, until=MAX_LABEL_GRAPHEMES + 1) > MAX_LABEL_GRAPHEMES:
        raise RecordError("bad_label", f"label exceeds {MAX_LABEL_GRAPHEMES} graphemes or {MAX_LABEL_BYTES} bytes")
    return value


def _check(record: dict[str, Any], rkey: str) -> Checked:
    validate_didcomm_keypackage(record, rkey)
    return Checked("valid")


def _project(b: StoredBinding) -> dict[str, Any]:
    view: dict[str, Any] = {}
    did = text_field(b.record, "did")
    if did is not None:
        view["did"] = did
    mediators = b.record.get("mediators") if isinstance(b.record, dict) else None
    if isinstance(mediators, list) and all(isinstance(m, str) for m in mediators):
        view["mediators"] = mediators
    label = text_field(b.record, "label")
    if label is not None:
        view["label"] = label
    return view


FAMILY: Final = Family(NSID, "didcomm", single=True, validate=_check, project=_project)
