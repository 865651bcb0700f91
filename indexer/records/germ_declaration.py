"""``com.germnetwork.declaration`` records: the Germ Network messaging identity of an account.

Checked against the published lexicon (tests/fixtures/lexicons/com.germnetwork.declaration.json),
plus what makes the record usable: `currentKey` must be an Ed25519 signing key.

`currentKey` is Germ's TypedKeyMaterial: one algorithm byte, then the key. The byte values are
those of Germ's Swift protocol library (germ-network/autonomous-comm-protocol, TypedKeyMaterial
`Algorithms`): 0 AES-GCM-256, 1 ChaCha20-Poly1305, 2 X25519 key agreement, 3 Ed25519 signing,
4 HPKE, 5 HMAC-SHA256. A published declaration (tests/fixtures/germ/declaration.json) carries
byte 3, and so does the agent key inside its key package. (Germ's TypeScript relay draft lists
the same enum without AES-GCM, which would make Ed25519 byte 2; the records say otherwise.)

`keyPackage` is an "AnchorHello" signed by `currentKey`; its signature covers the account's DID
in a layout that has changed between Germ releases, and no public fixture carries both a key
package and the DID it was signed for, so atmx does not check it: the record is `valid`, never
`verified`, and the API says `keyPackage: {size, checked: false}`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from atmx.indexer.records.datamodel import as_bytes, bytes_json, is_uri, utf8_length
from atmx.indexer.records.envelope import RecordError, check_envelope
from atmx.indexer.records.family import Checked, Family
from atmx.indexer.records.keys import is_ed25519_key
from atmx.indexer.records.stored import StoredBinding, text_field

__all__ = ["FAMILY", "NSID", "GermDeclaration", "MessageMe", "RecordError", "validate_germ_declaration"]

NSID: Final = "com.germnetwork.declaration"
ED25519_SIGNING: Final = 3  # TypedKeyMaterial byte of an Ed25519 signing key (see above)
KEY_ALGORITHMS: Final = {
    0: "aes-gcm-256",
    1: "chacha20-poly1305",
    2: "x25519",
    3: "ed25519",
    4: "hpke",
    5: "hmac-sha256",
}
SHOW_BUTTON_TO: Final = frozenset({"usersIFollow", "everyone"})  # lexicon knownValues
MAX_MESSAGE_ME_URL_BYTES: Final = 2047
MAX_SHOW_BUTTON_TO_BYTES: Final = 100
MAX_CONTINUITY_PROOFS: Final = 1000
# An AnchorHello is a 65-byte typed signature and one length-prefixed blob whose length is a
# 16-bit number (Germ's LinearEncoding: a 0xff marker, then 2 bytes): nothing longer can be one.
MAX_KEY_PACKAGE_BYTES: Final = 65 + 3 + 0xFFFF
_SEMVER_RE: Final = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")


@dataclass(frozen=True, slots=True)
class MessageMe:
    url: str  # no fragment, or an empty one: the client appends `#<recipient>+<viewer>`
    show_button_to: str  # one of SHOW_BUTTON_TO, or a value a client cannot act on


@dataclass(frozen=True, slots=True)
class GermDeclaration:
    version: str
    current_key: bytes  # the 32-byte Ed25519 key, without its algorithm byte
    message_me: MessageMe | None
    key_package: bytes | None
    continuity_proofs: tuple[bytes, ...]


def validate_germ_declaration(record: dict[str, Any], rkey: str) -> GermDeclaration:
    """Check a ``com.germnetwork.declaration`` record (rkey ``self``); raises RecordError."""
    record = check_envelope(record, rkey, NSID, ("version", "currentKey"))
    version = record["version"]
    if type(version) is not str or not 5 <= len(version) <= 14 or _SEMVER_RE.fullmatch(version) is None:
        raise RecordError("bad_version", "version is not a semver x.y.z of 5 to 14 characters")
    key = current_key(record["currentKey"])
    message_me = _message_me(record["messageMe"]) if "messageMe" in record else None
    key_package = _key_package(record["keyPackage"]) if "keyPackage" in record else None
    proofs = _continuity_proofs(record["continuityProofs"]) if "continuityProofs" in record else ()
    return GermDeclaration(version, key, message_me, key_package, proofs)


def current_key(value: object) -> bytes:
    """The Ed25519 key of a `currentKey` value; RecordError unless it is one."""
    typed = as_bytes(value, "bad_current_key", "currentKey")
    if not typed:
        raise RecordError("bad_current_key", "currentKey is empty")
    algorithm = KEY_ALGORITHMS.get(typed[0])
    if algorithm is None:
        raise RecordError("unknown_key_algorithm", f"currentKey algorithm byte {typed[0]} is not a Germ key type")
    if typed[0] != ED25519_SIGNING:
        raise RecordError("not_signing_key", f"currentKey algorithm byte {typed[0]} ({algorithm}) is not a signing key")
    if len(typed) != 33:
        raise RecordError("bad_key_length", f"currentKey is {len(typed)} bytes, not 1 + 32")
    if not is_ed25519_key(typed[1:]):
        raise RecordError("bad_key_point", "currentKey is not a valid Ed25519 public key")
    return typed[1:]


def _message_me(value: object) -> MessageMe:
    # both fields are required; others are ignored, as lexicon objects allow
    if type(value) is not dict or "messageMeUrl" not in value or "showButtonTo" not in value:
        raise RecordError("bad_message_me", "messageMe is not an object with messageMeUrl and showButtonTo")
    if value.get("$type", f"{NSID}#messageMe") != f"{NSID}#messageMe":
        raise RecordError("bad_message_me", f"messageMe $type is not {NSID}#messageMe")
    url, show = value["messageMeUrl"], value["showButtonTo"]
    size = utf8_length(url) if type(url) is str else None
    if size is None or not 1 <= size <= MAX_MESSAGE_ME_URL_BYTES or not is_uri(url):
        raise RecordError("bad_message_me_url", f"messageMeUrl is not a URI of 1 to {MAX_MESSAGE_ME_URL_BYTES} bytes")
    if url.partition("#")[2]:
        raise RecordError("message_me_url_fragment", "messageMeUrl has a fragment; it must be empty")
    size = utf8_length(show) if type(show) is str else None
    if size is None or not 1 <= size <= MAX_SHOW_BUTTON_TO_BYTES:
        raise RecordError("bad_show_button_to", f"showButtonTo is not 1 to {MAX_SHOW_BUTTON_TO_BYTES} bytes")
    return MessageMe(url, show)


def _key_package(value: object) -> bytes:
    raw = as_bytes(value, "bad_key_package", "keyPackage")
    if not raw:
        raise RecordError("bad_key_package", "keyPackage is empty")
    if len(raw) > MAX_KEY_PACKAGE_BYTES:
        raise RecordError("key_package_too_large", f"keyPackage exceeds {MAX_KEY_PACKAGE_BYTES} bytes")
    return raw


def _continuity_proofs(value: object) -> tuple[bytes, ...]:
    if type(value) is not list or len(value) > MAX_CONTINUITY_PROOFS:
        raise RecordError("bad_continuity_proofs", f"continuityProofs is not a list of at most {MAX_CONTINUITY_PROOFS}")
    return tuple(as_bytes(proof, "bad_continuity_proofs", "a continuity proof") for proof in value)


def _check(record: dict[str, Any], rkey: str) -> Checked:
    declaration = validate_germ_declaration(record, rkey)
    return Checked("valid", key=declaration.current_key)


def _project(b: StoredBinding) -> dict[str, Any]:
    """The record's fields, each shown only when it passes its own check (always, for a valid
    binding), so an invalid record still shows what it holds without a malformed value."""
    view: dict[str, Any] = {}
    record = b.record if isinstance(b.record, dict) else {}
    version = text_field(record, "version")
    if version is not None:
        view["version"] = version
    try:
        key = current_key(record.get("currentKey"))
    except RecordError:
        pass
    else:
        view["currentKey"] = bytes_json(bytes((ED25519_SIGNING,)) + key)
        view["keyAlgorithm"] = KEY_ALGORITHMS[ED25519_SIGNING]
    try:
        message_me = _message_me(record.get("messageMe"))
    except RecordError:
        pass
    else:
        view["messageMe"] = {
            "messageMeUrl": message_me.url,
            "showButtonTo": message_me.show_button_to,
            "showButtonToKnown": message_me.show_button_to in SHOW_BUTTON_TO,
        }
    try:
        key_package = _key_package(record.get("keyPackage"))
    except RecordError:
        pass
    else:
        view["keyPackage"] = {"size": len(key_package), "checked": False}
    try:
        proofs = _continuity_proofs(record.get("continuityProofs", []))
    except RecordError:
        pass
    else:
        view["continuityProofs"] = len(proofs)
    return view


FAMILY: Final = Family(NSID, "germ", single=True, validate=_check, project=_project)
