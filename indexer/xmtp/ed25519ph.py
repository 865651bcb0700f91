"""Ed25519ph verification (RFC 8032 §5.1, SHA-512 prehash, with context) as libxmtp accepts it.

libxmtp verifies with ed25519-dalek 2.x `VerifyingKey::from_bytes` + `verify_prehashed`:
- 32-byte key decompressed with curve25519-dalek `CompressedEdwardsY::decompress`, which takes y
  modulo p (non-canonical y in [p, 2^255) accepted) and keeps x = 0 when the sign bit asks for -0;
  small-order and mixed-order keys are NOT rejected (that is only `verify_strict`);
- 64-byte signature; S must be canonical (S < L); R is kept as bytes and never decompressed;
- k = SHA-512(dom2(1, ctx) || R || A_bytes || SHA-512(M)) mod L, with A_bytes the key as given;
- cofactorless: accept iff compress([S]B - [k]A) == R bytes.

The curve arithmetic runs in libsodium (PyNaCl) when it accepts the operands, which is every honest
key. libsodium refuses some operands dalek takes (non-canonical or small/mixed-order keys, zero
scalars, identity results); those go through pycryptodome's general point arithmetic instead. Both
paths compute the same group element, so acceptance does not depend on the path.
"""

from __future__ import annotations

import hashlib

from Crypto.PublicKey.ECC import EccPoint  # type: ignore[attr-defined]  # see the pycryptodome section below
from nacl import bindings as sodium
from nacl.exceptions import CryptoError
from nacl.exceptions import RuntimeError as SodiumRuntimeError

PUBLIC_SIGNATURE_CONTEXT = b"PUBLIC SIGNATURE CONTEXT"  # signWithInstallationKey / verifySignedWithPublicKey
IDENTITY_UPDATE_CONTEXT = b"IDENTITY UPDATE SIGNATURE"  # installation-key signatures in identity updates

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
_DOM2_PREFIX = b"SigEd25519 no Ed25519 collisions\x01"


def _dom2(context: bytes) -> bytes:
    return _DOM2_PREFIX + bytes((len(context),)) + context


def challenge(public_key: bytes, r_bytes: bytes, prehash: bytes, context: bytes) -> int:
    """k = SHA-512(dom2 || R || A || PH(M)) mod L."""
    digest = hashlib.sha512(_dom2(context) + r_bytes + public_key + prehash).digest()
    return int.from_bytes(digest, "little") % _L


def decompress(encoded: bytes) -> tuple[int, int] | None:
    """Affine (x, y) the way curve25519-dalek decompresses, or None when y gives no point."""
    y = int.from_bytes(encoded, "little")
    sign = y >> 255
    y = (y & ((1 << 255) - 1)) % _P  # dalek reduces a non-canonical y instead of rejecting it
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    x = (u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P)) % _P
    vxx = (v * x * x) % _P
    if vxx == (-u) % _P:
        x = (x * _SQRT_M1) % _P
    elif vxx != u:
        return None
    if (x & 1) != sign:
        x = (-x) % _P  # for x == 0 this stays 0: dalek accepts the "negative zero" encoding
    return x, y


_BASE_POINT = decompress(bytes.fromhex("58" + "66" * 31))  # RFC 8032 B, y = 4/5
assert _BASE_POINT is not None

# --- pycryptodome's Edwards arithmetic: the general path's only dependency on it ---
# EccPoint is documented as Crypto.PublicKey.ECC.EccPoint; that module re-exports it without
# __all__, hence the type: ignore on the import. What the general path relies on (pinned by
# tests/test_ed25519ph.py::test_pycryptodome_arithmetic_is_what_the_general_path_relies_on):
# EccPoint takes any point on the curve as given (small-order and mixed-order included),
# multiplies by any scalar in [0, L), and returns the identity as the point at infinity.

_BASE = EccPoint(*_BASE_POINT, curve="ed25519")


def _linear_combination(s: int, k: int, point: tuple[int, int]) -> tuple[int, int]:
    """Affine [s]B + [k]P for any point P on the curve; the identity is (0, 1)."""
    result = _BASE * s + EccPoint(*point, curve="ed25519") * k
    if result.is_point_at_infinity():
        return 0, 1
    return int(result.x), int(result.y)


# --- end of the pycryptodome section ---


def _compress(x: int, y: int) -> bytes:
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _recompute_r_sodium(s_bytes: bytes, k: int, public_key: bytes) -> bytes | None:
    try:
        s_b = sodium.crypto_scalarmult_ed25519_base_noclamp(s_bytes)
        k_a = sodium.crypto_scalarmult_ed25519_noclamp(k.to_bytes(32, "little"), public_key)
        return bytes(sodium.crypto_core_ed25519_sub(s_b, k_a))
    except (SodiumRuntimeError, CryptoError, ValueError):
        return None


def _recompute_r_general(s: int, k: int, point: tuple[int, int]) -> bytes:
    x, y = point
    return _compress(*_linear_combination(s, k, ((-x) % _P, y)))  # [S]B - [k]A


def verify_ed25519ph(public_key: bytes, message: bytes, signature: bytes, context: bytes) -> bool:
    """True iff `signature` is an Ed25519ph signature of `message` under `context`, as dalek decides."""
    if len(public_key) != 32 or len(signature) != 64 or len(context) > 255:
        return False
    r_bytes, s_bytes = signature[:32], signature[32:]
    s = int.from_bytes(s_bytes, "little")
    if s >= _L:
        return False
    k = challenge(public_key, r_bytes, hashlib.sha512(message).digest(), context)
    recomputed = _recompute_r_sodium(s_bytes, k, public_key)
    if recomputed is None:
        point = decompress(public_key)
        if point is None:
            return False
        recomputed = _recompute_r_general(s, k, point)
    return recomputed == r_bytes
