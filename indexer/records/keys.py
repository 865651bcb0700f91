"""Public keys records publish: is it a usable key of its algorithm, and in which one form atmx
stores it for lookups (pure).

Ed25519: exactly 32 bytes that libsodium accepts as a point (canonical encoding, on the curve, in
the prime-order subgroup, not of small order), which every key made as a*B is; anything else
could not have been generated honestly and is refused.
P-256: a SEC1 point, compressed (33 bytes) or uncompressed (65 bytes), that decodes on the curve.
Stored compressed, so a lookup matches whichever of the two forms a client sends.
"""

from __future__ import annotations

from typing import Final

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nacl.bindings import crypto_core_ed25519_is_valid_point

__all__ = ["ED25519_KEY_BYTES", "is_ed25519_key", "lookup_form", "p256_compressed"]

ED25519_KEY_BYTES: Final = 32


def is_ed25519_key(raw: bytes) -> bool:
    return len(raw) == ED25519_KEY_BYTES and bool(crypto_core_ed25519_is_valid_point(raw))


def p256_compressed(raw: bytes) -> bytes | None:
    """The compressed SEC1 form of a P-256 point given compressed or uncompressed; None otherwise."""
    if not ((len(raw) == 33 and raw[0] in (2, 3)) or (len(raw) == 65 and raw[0] == 4)):
        return None  # also keeps hybrid (0x06/0x07) and infinity encodings out
    try:
        point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError:
        return None
    return point.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)


def lookup_form(raw: bytes) -> bytes:
    """The form a key is stored in for lookups: P-256 compressed; anything else as given."""
    compressed = p256_compressed(raw)
    return compressed if compressed is not None else raw
