"""DID documents: the #atproto signing key, the PDS endpoint, the claimed handle, and the
`#atproto_mls` delivery service Catbird MLS chat reads. Pure.

The signing key is always returned in did:key form (multicodec prefix + compressed point,
base58btc), whatever encoding the document used: live plc.directory serves `Multikey`, the
reference PLC and many did:web hosts still serve the 2019 suites with raw key bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import coincurve
from cryptography.hazmat.primitives.asymmetric import ec

from atmx.indexer.repo.crypto import Base58Error, decode_base58btc, encode_base58btc
from atmx.indexer.repo.syntax import is_handle

__all__ = ["MLS_SERVICE_TYPE", "DidDocError", "DidInfo", "mls_delivery_endpoint", "parse_did_document"]

# Multicodec varints for the two curves atproto allows.
_K256_PREFIX = b"\xe7\x01"  # secp256k1-pub
_P256_PREFIX = b"\x80\x24"  # p256-pub

MLS_SERVICE_TYPE = "AtprotoMLSDeliveryService"
_MAX_ENDPOINT_LEN = 2048

# Longest sane publicKeyMultibase: 2 + 65 bytes is ~92 base58 chars. Capping before decoding keeps
# base58's quadratic decoding away from hostile megabyte strings.
_MAX_MULTIBASE_LEN = 128


class DidDocError(ValueError):
    """A DID document that cannot be used. `reason`: id_mismatch, bad_document, bad_key."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DidInfo:
    did: str
    signing_key: str | None  # did:key:z... (compressed point), or None if the doc has no #atproto key
    pds: str | None
    handle: str | None  # lowercased; not yet verified bidirectionally


def parse_did_document(did: str, doc: Mapping[str, Any]) -> DidInfo:
    if not isinstance(doc, Mapping):
        raise DidDocError("bad_document", "DID document is not a JSON object")
    doc_id = doc.get("id")
    if not isinstance(doc_id, str):
        raise DidDocError("bad_document", "DID document has no string id")
    if doc_id != did:
        raise DidDocError("id_mismatch", f"DID document id {doc_id[:200]!r} does not match {did!r}")
    return DidInfo(
        did=did,
        signing_key=_signing_key(did, _list_field(doc, "verificationMethod")),
        pds=_pds_endpoint(did, _list_field(doc, "service")),
        handle=_handle(_list_field(doc, "alsoKnownAs")),
    )


def _list_field(doc: Mapping[str, Any], name: str) -> list[Any]:
    value = doc.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise DidDocError("bad_document", f"DID document field {name} is not an array")
    return value


def _matches_fragment(did: str, entry_id: object, fragment: str) -> bool:
    # Relative ("#atproto") and absolute ("did:plc:...#atproto") ids are both in use.
    return entry_id == fragment or entry_id == did + fragment


def _handle(also_known_as: list[Any]) -> str | None:
    for aka in also_known_as:
        if isinstance(aka, str) and aka.startswith("at://"):
            candidate = aka[5:]
            if is_handle(candidate):
                return candidate.lower()
    return None


def _pds_endpoint(did: str, services: list[Any]) -> str | None:
    for service in services:
        if not isinstance(service, Mapping):
            raise DidDocError("bad_document", "DID document service entry is not an object")
        if not _matches_fragment(did, service.get("id"), "#atproto_pds"):
            continue
        # Like @atproto/identity: the first entry with the id decides; a wrong type means no PDS.
        endpoint = service.get("serviceEndpoint")
        if service.get("type") != "AtprotoPersonalDataServer" or not isinstance(endpoint, str):
            return None
        return endpoint if _is_http_url(endpoint) else None
    return None


def mls_delivery_endpoint(did: str, service: object) -> str | None:
    """The HTTPS endpoint of a DID document's first `#atproto_mls` service entry, if that entry is
    usable: type AtprotoMLSDeliveryService and an https URL (Catbird's delivery services take
    nothing else, and a wrong type means no service). Never raises: the entry comes from a cached
    document an API read must not fail on."""
    if not isinstance(service, Mapping) or not _matches_fragment(did, service.get("id"), "#atproto_mls"):
        return None
    endpoint = service.get("serviceEndpoint")
    if service.get("type") != MLS_SERVICE_TYPE or not isinstance(endpoint, str) or len(endpoint) > _MAX_ENDPOINT_LEN:
        return None
    return endpoint if endpoint.startswith("https://") and _is_http_url(endpoint) else None


def _is_http_url(url: str) -> bool:
    for scheme in ("https://", "http://"):
        if url.startswith(scheme):
            host = url[len(scheme) :].split("/", 1)[0]
            return bool(host) and url.isascii() and not any(c.isspace() for c in url)
    return False


def _signing_key(did: str, methods: list[Any]) -> str | None:
    for method in methods:
        if not isinstance(method, Mapping):
            raise DidDocError("bad_document", "DID document verificationMethod entry is not an object")
        if not _matches_fragment(did, method.get("id"), "#atproto"):
            continue
        controller = method.get("controller")
        if controller is not None and controller != did:
            raise DidDocError("bad_key", "#atproto key is controlled by another DID")
        return _normalise_key(method.get("type"), method.get("publicKeyMultibase"))
    return None


def _normalise_key(key_type: object, multibase: object) -> str:
    if not isinstance(multibase, str) or not multibase.startswith("z") or len(multibase) > _MAX_MULTIBASE_LEN:
        raise DidDocError("bad_key", "#atproto key has no base58btc publicKeyMultibase")
    try:
        raw = decode_base58btc(multibase)
    except Base58Error as exc:
        raise DidDocError("bad_key", "publicKeyMultibase is not valid base58btc") from exc
    if key_type == "Multikey":
        prefix, point = raw[:2], raw[2:]
        if prefix not in (_K256_PREFIX, _P256_PREFIX) or len(point) != 33:
            raise DidDocError("bad_key", "Multikey is not a compressed secp256k1 or P-256 key")
    elif key_type == "EcdsaSecp256k1VerificationKey2019":
        prefix, point = _K256_PREFIX, raw
    elif key_type == "EcdsaSecp256r1VerificationKey2019":
        prefix, point = _P256_PREFIX, raw
    else:
        raise DidDocError("bad_key", f"unsupported #atproto key type {str(key_type)[:100]!r}")
    # Check the point as given: compressing first would throw away a bogus y.
    _check_on_curve(prefix, point)
    return "did:key:" + encode_base58btc(prefix + _compress(point))


def _compress(raw: bytes) -> bytes:
    # SEC1: the compressed form keeps x and the parity of y.
    if len(raw) == 65 and raw[0] == 0x04:
        return bytes((0x02 | (raw[64] & 1),)) + raw[1:33]
    if len(raw) == 33 and raw[0] in (0x02, 0x03):
        return raw
    raise DidDocError("bad_key", "legacy key is neither a 65-byte uncompressed nor a 33-byte compressed point")


def _check_on_curve(prefix: bytes, point: bytes) -> None:
    if len(point) not in (33, 65):
        raise DidDocError("bad_key", "key is neither a 65-byte uncompressed nor a 33-byte compressed point")
    try:
        if prefix == _K256_PREFIX:
            coincurve.PublicKey(point)
        else:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError as exc:
        raise DidDocError("bad_key", "#atproto key is not a point on its curve") from exc
