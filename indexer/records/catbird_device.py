"""Catbird MLS device records: one per device (record key = the device id), each publishing the
device's MLS signature key. ``blue.catbird.chat.device`` is current; ``blue.catbird.mlsChat.device``
is the collection it replaced, still found in repos (legacy, with deviceId/deviceName/platform).

An MLS leaf is authorised for an account only if its signature key is one of the account's
device keys, so the key must really be a key of the named algorithm: Ed25519 (32 bytes, a valid
point) or P-256 (a SEC1 point, compressed or not). Any other algorithm, secp256k1 included, is
refused, as Catbird's clients refuse it. The key kept for lookups (`Checked.key`) is the Ed25519
key as given, or the P-256 point in compressed form (see records/keys.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from atmx.indexer.records import catbird_declaration
from atmx.indexer.records.datamodel import as_bytes, bytes_json, utf8_length
from atmx.indexer.records.envelope import RecordError, check_envelope
from atmx.indexer.records.family import Checked, Family
from atmx.indexer.records.keys import ED25519_KEY_BYTES, is_ed25519_key, p256_compressed
from atmx.indexer.records.stored import StoredBinding, text_field
from atmx.indexer.repo.syntax import is_datetime

__all__ = ["FAMILY", "LEGACY_FAMILY", "LEGACY_NSID", "NSID", "CatbirdDevice", "RecordError", "validate_device"]

NSID: Final = "blue.catbird.chat.device"
LEGACY_NSID: Final = "blue.catbird.mlsChat.device"
ALGORITHMS: Final = ("ed25519", "p256")
# the legacy collection's descriptive fields: bounded, since the index stores and serves them
LEGACY_TEXT_LIMITS: Final = {"deviceId": 256, "deviceName": 640, "platform": 64}


@dataclass(frozen=True, slots=True)
class CatbirdDevice:
    algorithm: str  # ed25519 | p256
    key: bytes  # as published
    lookup_key: bytes  # Ed25519 as published, P-256 compressed
    created_at: str


def validate_device(record: dict[str, Any], rkey: str, *, legacy: bool = False) -> CatbirdDevice:
    """Check a device record of either collection (any record key); raises RecordError."""
    nsid = LEGACY_NSID if legacy else NSID
    record = check_envelope(record, rkey, nsid, ("mlsSignaturePublicKey", "algorithm", "createdAt"), single=False)
    algorithm = record["algorithm"]
    if type(algorithm) is not str:
        raise RecordError("bad_algorithm", "algorithm is not a string")
    if algorithm not in ALGORITHMS:
        raise RecordError("unsupported_algorithm", f"algorithm {algorithm[:64]!r} is not ed25519 or p256")
    key = as_bytes(record["mlsSignaturePublicKey"], "bad_key", "mlsSignaturePublicKey")
    lookup_key = _key(algorithm, key)
    created_at = record["createdAt"]
    if not is_datetime(created_at):
        raise RecordError("bad_created_at", "createdAt is not an atproto datetime")
    if legacy:
        for field, limit in LEGACY_TEXT_LIMITS.items():
            value = record.get(field, "")
            size = utf8_length(value) if type(value) is str else None
            if size is None or size > limit:
                raise RecordError("bad_device_field", f"{field} is not a string of at most {limit} bytes")
    return CatbirdDevice(algorithm, key, lookup_key, created_at)


def _key(algorithm: str, key: bytes) -> bytes:
    if algorithm == "ed25519":
        if len(key) != ED25519_KEY_BYTES:
            raise RecordError("bad_key_length", f"an Ed25519 key is 32 bytes, not {len(key)}")
        if not is_ed25519_key(key):
            raise RecordError("bad_key_point", "mlsSignaturePublicKey is not a valid Ed25519 public key")
        return key
    if len(key) not in (33, 65):
        raise RecordError("bad_key_length", f"a P-256 key is 33 or 65 bytes, not {len(key)}")
    compressed = p256_compressed(key)
    if compressed is None:
        raise RecordError("bad_key_point", "mlsSignaturePublicKey is not a P-256 point")
    return compressed


def _checker(legacy: bool) -> Callable[[dict[str, Any], str], Checked]:
    def check(record: dict[str, Any], rkey: str) -> Checked:
        return Checked("valid", key=validate_device(record, rkey, legacy=legacy).lookup_key)

    return check


def _projector(legacy: bool) -> Callable[[StoredBinding], dict[str, Any]]:
    def project(b: StoredBinding) -> dict[str, Any]:
        record = b.record if isinstance(b.record, dict) else {}
        device_id = text_field(record, "deviceId") if legacy else None
        view: dict[str, Any] = {"deviceId": device_id if device_id is not None else b.rkey}
        algorithm = text_field(record, "algorithm")
        if algorithm is not None:
            view["algorithm"] = algorithm
        try:
            key = as_bytes(record.get("mlsSignaturePublicKey"), "bad_key", "mlsSignaturePublicKey")
        except RecordError:
            pass
        else:
            view["mlsSignaturePublicKey"] = bytes_json(key)
        view["legacy"] = legacy
        if legacy:
            for field in ("deviceName", "platform"):
                value = text_field(record, field)
                if value is not None:
                    view[field] = value
        return view

    return project


FAMILY: Final = Family(
    NSID,
    "catbird",
    single=False,
    validate=_checker(False),
    project=_projector(False),
    compose=catbird_declaration.compose,
)
LEGACY_FAMILY: Final = Family(
    LEGACY_NSID,
    "catbird",
    single=False,
    validate=_checker(True),
    project=_projector(True),
    legacy=True,
    compose=catbird_declaration.compose,
)
