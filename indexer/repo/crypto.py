"""atproto signing keys: parsing (did:key, Multikey, legacy DID-document forms) and ECDSA verify.

Signatures are 64-byte compact r||s over SHA-256 of the message; DER and high-S are
rejected on both curves. secp256k1 goes through libsecp256k1 (coincurve), about 10x
faster than OpenSSL and low-S-only by construction; P-256 goes through `cryptography`
with the compact and low-S checks done here, because OpenSSL accepts high-S.

Only public APIs: coincurve's `PublicKey.verify` takes DER, so the compact signature is
re-encoded with `encode_dss_signature` (measured: 30.0 µs a verify against 29.9 µs through
coincurve's private cffi layer with the compact form, the difference is noise).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import lru_cache
from typing import Final, Literal

import coincurve
import libipld
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "MAX_BASE58_CHARS",
    "Base58Error",
    "Curve",
    "KeyParseError",
    "PublicKey",
    "decode_base58btc",
    "encode_base58btc",
    "format_did_key",
    "key_from_did_key",
    "parse_did_key",
    "parse_legacy_key",
    "parse_multikey",
    "parse_verification_method",
]

Curve = Literal["k256", "p256"]

# Multicodec varints: secp256k1-pub 0xe7, p256-pub 0x1200.
_K256_CODEC = b"\xe7\x01"
_P256_CODEC = b"\x80\x24"

_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_P256_HALF_N = _P256_N // 2
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())

_MAX_KEY_STRING = 256  # longest legitimate input is ~90 chars; bounds base58's quadratic cost

# --- base58btc: the `z` multibase of did:key, Multikey and did:peer, through libipld ---

# Base58 decoding is quadratic in the input length, in libipld as in any base conversion
# (100,000 characters take about a second): no caller needs more than a did:peer element,
# which a DID's 2,048-character limit bounds. Callers cap tighter where they can.
MAX_BASE58_CHARS: Final = 4096


class Base58Error(ValueError):
    """Not a `z` (base58btc) multibase string of at most MAX_BASE58_CHARS characters."""

    reason = "bad_base58"


def encode_base58btc(data: bytes) -> str:
    """`z` + base58btc(data), the multibase form did:key, Multikey and did:peer use."""
    return libipld.encode_multibase("z", data)


def decode_base58btc(text: str) -> bytes:
    """The bytes of a `z`-prefixed base58btc multibase string; Base58Error on anything else."""
    # libipld decodes every multibase; keys in atproto and did:peer are base58btc only.
    if not text.startswith("z"):
        raise Base58Error(f"not a base58btc multibase string: {text[:64]!r}")
    if len(text) > MAX_BASE58_CHARS:
        raise Base58Error(f"base58btc string of {len(text)} characters is too long")
    try:
        _base, data = libipld.decode_multibase(text)
    except ValueError:
        raise Base58Error(f"not base58btc: {text[:64]!r}") from None
    return data


class KeyParseError(ValueError):
    """A key string that can't be parsed (reason `bad_key`)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"bad_key: {message}")
        self.reason = "bad_key"


def _decode_key_string(multibase: str) -> bytes:
    if len(multibase) > _MAX_KEY_STRING:
        raise KeyParseError("base58 string too long")
    try:
        return decode_base58btc(multibase)
    except Base58Error as exc:
        raise KeyParseError(str(exc)) from None


class PublicKey(ABC):
    """A parsed, ready-to-verify public key. Instances are immutable and safe to cache."""

    curve: Curve
    compressed: bytes  # 33-byte SEC1 compressed point

    @abstractmethod
    def verify(self, message: bytes, sig: bytes) -> bool:
        """True iff `sig` is a valid 64-byte low-S r||s signature of SHA-256(message)."""

    @property
    def did_key(self) -> str:
        return format_did_key(self.curve, self.compressed)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and (self.curve, self.compressed) == (
            other.curve,
            other.compressed,
        )

    def __hash__(self) -> int:
        return hash((self.curve, self.compressed))

    def __repr__(self) -> str:
        return f"PublicKey({self.did_key})"


class K256PublicKey(PublicKey):
    curve: Curve = "k256"

    def __init__(self, sec1: bytes) -> None:
        try:
            key = coincurve.PublicKey(sec1)
        except ValueError:
            raise KeyParseError("not a valid secp256k1 point") from None
        self._key = key  # parsed once, reused for every verify
        self.compressed = key.format(compressed=True)

    def verify(self, message: bytes, sig: bytes) -> bool:
        if len(sig) != 64:
            return False
        r = int.from_bytes(sig[:32], "big")
        s = int.from_bytes(sig[32:], "big")
        # libsecp256k1 verifies only normalized (low-S) signatures and fails r or s of 0 or
        # >= n; tests/test_crypto.py pins each of these on coincurve's public verify.
        return self._key.verify(encode_dss_signature(r, s), message)


class P256PublicKey(PublicKey):
    curve: Curve = "p256"

    def __init__(self, sec1: bytes) -> None:
        try:
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), sec1)
        except ValueError:
            raise KeyParseError("not a valid P-256 point") from None
        self._key = key
        self.compressed = key.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)

    def verify(self, message: bytes, sig: bytes) -> bool:
        if len(sig) != 64:
            return False
        r = int.from_bytes(sig[:32], "big")
        s = int.from_bytes(sig[32:], "big")
        if not (0 < r < _P256_N and 0 < s <= _P256_HALF_N):
            return False
        try:
            self._key.verify(encode_dss_signature(r, s), message, _ECDSA_SHA256)
        except InvalidSignature:
            return False
        return True


def _make_key(curve: Curve, sec1: bytes) -> PublicKey:
    return K256PublicKey(sec1) if curve == "k256" else P256PublicKey(sec1)


def _compress(curve: Curve, key_bytes: bytes) -> bytes:
    return _make_key(curve, key_bytes).compressed


def format_did_key(curve: Curve, key_bytes: bytes) -> str:
    """`did:key:z...` for a SEC1 point (compressed or uncompressed; output is always compressed)."""
    compressed = key_bytes if len(key_bytes) == 33 else _compress(curve, key_bytes)
    codec = _K256_CODEC if curve == "k256" else _P256_CODEC
    return "did:key:" + encode_base58btc(codec + compressed)


def parse_multikey(multibase: str) -> PublicKey:
    """Parse a Multikey `publicKeyMultibase`: `z` + base58btc(multicodec || 33-byte compressed point)."""
    if not multibase.startswith("z"):
        raise KeyParseError("multikey must be base58btc ('z' prefix)")
    raw = _decode_key_string(multibase)
    codec, point = raw[:2], raw[2:]
    if codec == _K256_CODEC:
        curve: Curve = "k256"
    elif codec == _P256_CODEC:
        curve = "p256"
    else:
        raise KeyParseError(f"unsupported multicodec {codec.hex()}")
    if len(point) != 33:
        raise KeyParseError("multikey must hold a 33-byte compressed point")
    return _make_key(curve, point)


def parse_did_key(did_key: str) -> PublicKey:
    if not did_key.startswith("did:key:"):
        raise KeyParseError("not a did:key")
    return parse_multikey(did_key[len("did:key:") :])


def parse_legacy_key(multibase: str, curve: Curve) -> PublicKey:
    """Parse the legacy `Ecdsa*VerificationKey2019` form: no multicodec, point compressed (33 bytes),
    uncompressed (65 bytes, 0x04 prefix) or bare x||y (64 bytes)."""
    if not multibase.startswith("z"):
        raise KeyParseError("legacy key must be base58btc ('z' prefix)")
    raw = _decode_key_string(multibase)
    if len(raw) == 64:
        raw = b"\x04" + raw
    if len(raw) not in (33, 65):
        raise KeyParseError(f"unexpected legacy key length {len(raw)}")
    return _make_key(curve, raw)


_LEGACY_TYPES: dict[str, Curve] = {
    "EcdsaSecp256k1VerificationKey2019": "k256",
    "EcdsaSecp256r1VerificationKey2019": "p256",
}


def parse_verification_method(type_: str, multibase: str) -> PublicKey:
    """Key from a DID-document verification method's `type` and `publicKeyMultibase`."""
    if type_ == "Multikey":
        return parse_multikey(multibase)
    curve = _LEGACY_TYPES.get(type_)
    if curve is None:
        raise KeyParseError(f"unsupported verification method type {type_!r}")
    return parse_legacy_key(multibase, curve)


@lru_cache(maxsize=65536)
def key_from_did_key(did_key: str) -> PublicKey:
    """Cached `parse_did_key`: the hot path verifies with the same few keys over and over."""
    return parse_did_key(did_key)
