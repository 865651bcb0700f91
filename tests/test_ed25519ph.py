"""Ed25519ph verification: libxmtp vectors, RFC 8032, and the edge cases where verifiers disagree.

The edge-case expectations follow ed25519-dalek 2.x `verify_prehashed` (what libxmtp calls):
keys are decompressed leniently (y mod p, "negative zero" x), small-order and mixed-order keys are
allowed, S must be < L, and the equation is cofactorless: encode([S]B - [k]A) == R bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xmtp_keys import InstallationKey

from atmx.indexer.xmtp import ed25519ph
from atmx.indexer.xmtp.ed25519ph import (
    IDENTITY_UPDATE_CONTEXT,
    PUBLIC_SIGNATURE_CONTEXT,
    challenge,
    decompress,
    verify_ed25519ph,
)

VECTORS: dict[str, Any] = json.loads((Path(__file__).parent / "fixtures" / "xmtp-vectors.json").read_text())
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P

# Reference affine Edwards arithmetic (test oracle only, for building crafted points).
Point = tuple[int, int]
IDENTITY: Point = (0, 1)


def add(a: Point, b: Point) -> Point:
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    x3 = (x1 * y2 + x2 * y1) * pow(1 + t, P - 2, P) % P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P
    return x3, y3


def mul(n: int, a: Point) -> Point:
    # double-and-add in extended coordinates (X, Y, Z, T), one inversion at the end
    def ext_add(p1: tuple[int, ...], p2: tuple[int, ...]) -> tuple[int, ...]:
        x1, y1, z1, t1 = p1
        x2, y2, z2, t2 = p2
        aa, bb = (y1 - x1) * (y2 - x2) % P, (y1 + x1) * (y2 + x2) % P
        cc, dd = 2 * D * t1 * t2 % P, 2 * z1 * z2 % P
        e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
        return e * f % P, g * h % P, f * g % P, e * h % P

    result: tuple[int, ...] = (0, 1, 1, 0)
    addend: tuple[int, ...] = (a[0], a[1], 1, a[0] * a[1] % P)
    while n:
        if n & 1:
            result = ext_add(result, addend)
        addend = ext_add(addend, addend)
        n >>= 1
    zi = pow(result[2], P - 2, P)
    return result[0] * zi % P, result[1] * zi % P


def encode(a: Point) -> bytes:
    return (a[1] | ((a[0] & 1) << 255)).to_bytes(32, "little")


def point(encoded: bytes) -> Point:
    decoded = decompress(encoded)
    assert decoded is not None
    return decoded


BASE = point(bytes.fromhex("58" + "66" * 31))
# An order-8 torsion point (one of the libsodium small-order blocklist encodings).
T8_BYTES = bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")
T8 = point(T8_BYTES)


def sign_raw(secret: int, public: bytes, message: bytes, context: bytes, nonce: int) -> bytes:
    """Ed25519ph with an explicit secret scalar and nonce (for crafted keys)."""
    r_bytes = encode(mul(nonce, BASE))
    k = challenge(public, r_bytes, hashlib.sha512(message).digest(), context)
    return r_bytes + ((nonce + k * secret) % L).to_bytes(32, "little")


def installation_public() -> bytes:
    return bytes.fromhex(VECTORS["installation_key"]["public_key_hex"])


def test_torsion_point_has_order_8() -> None:
    assert mul(8, T8) == IDENTITY and mul(4, T8) != IDENTITY


def test_rfc8032_ed25519ph_abc_vector() -> None:
    v = VECTORS["rfc8032_ed25519ph_test_abc"]
    pk, sig = bytes.fromhex(v["public_key_hex"]), bytes.fromhex(v["signature_hex"])
    assert verify_ed25519ph(pk, bytes.fromhex(v["message_hex"]), sig, b"")
    assert not verify_ed25519ph(pk, b"abd", sig, b"")
    assert not verify_ed25519ph(pk, b"abc", sig, b"x")


@pytest.mark.parametrize("index", range(3))
def test_libxmtp_signatures_verify(index: int) -> None:
    v = VECTORS["sign_with_installation_key_vectors"][index]
    sig = base64.b64decode(v["signature_b64"])
    assert sig.hex() == v["signature_hex"]
    assert verify_ed25519ph(installation_public(), v["text"].encode(), sig, PUBLIC_SIGNATURE_CONTEXT)
    assert not verify_ed25519ph(installation_public(), v["text"].encode(), sig, IDENTITY_UPDATE_CONTEXT)


def test_test_signer_is_byte_identical_to_libxmtp() -> None:
    key = InstallationKey(bytes.fromhex(VECTORS["installation_key"]["seed_hex"]))
    assert key.public == installation_public()
    for v in VECTORS["sign_with_installation_key_vectors"]:
        assert key.sign_ph(v["text"], PUBLIC_SIGNATURE_CONTEXT).hex() == v["signature_hex"]


@pytest.mark.parametrize("index", range(2))
def test_libxmtp_negatives_rejected(index: int) -> None:
    v = VECTORS["negative"][index]
    sig = bytes.fromhex(v["signature_hex"]) if "signature_hex" in v else base64.b64decode(v["signature_b64"])
    assert not verify_ed25519ph(installation_public(), v["text"].encode(), sig, PUBLIC_SIGNATURE_CONTEXT)


def test_wrong_context_signature_verifies_under_its_own_context() -> None:
    # the negative vector is a genuine signature, just with the other context
    v = VECTORS["negative"][0]
    sig = bytes.fromhex(v["signature_hex"])
    assert verify_ed25519ph(installation_public(), v["text"].encode(), sig, IDENTITY_UPDATE_CONTEXT)


def test_non_canonical_s_rejected() -> None:
    v = VECTORS["sign_with_installation_key_vectors"][0]
    sig = base64.b64decode(v["signature_b64"])
    s = int.from_bytes(sig[32:], "little")
    forged = sig[:32] + (s + L).to_bytes(32, "little")  # same group element, non-canonical scalar
    assert not verify_ed25519ph(installation_public(), v["text"].encode(), forged, PUBLIC_SIGNATURE_CONTEXT)


def test_length_checks() -> None:
    v = VECTORS["sign_with_installation_key_vectors"][0]
    sig, text, pk = base64.b64decode(v["signature_b64"]), v["text"].encode(), installation_public()
    ctx = PUBLIC_SIGNATURE_CONTEXT
    assert not verify_ed25519ph(pk, text, sig[:63], ctx)
    assert not verify_ed25519ph(pk, text, sig + b"\x00", ctx)
    assert not verify_ed25519ph(pk[:31], text, sig, ctx)
    assert not verify_ed25519ph(pk + b"\x00", text, sig, ctx)
    assert not verify_ed25519ph(pk, text, sig, b"x" * 256)


def test_key_not_on_curve_rejected() -> None:
    bad = next(bytes([i]) + bytes(31) for i in range(2, 255) if decompress(bytes([i]) + bytes(31)) is None)
    sig = sign_raw(1, bad, b"m", PUBLIC_SIGNATURE_CONTEXT, 5)
    assert not verify_ed25519ph(bad, b"m", sig, PUBLIC_SIGNATURE_CONTEXT)


# --- small-order and non-canonical keys: dalek's verify_prehashed accepts these ------------------

IDENTITY_KEYS = {
    "canonical": encode(IDENTITY),
    "non_canonical_y": (P + 1).to_bytes(32, "little"),  # y = p + 1 reduces to 1
    "negative_zero_x": bytes.fromhex("01" + "00" * 30 + "80"),  # sign bit set on x = 0
}


@pytest.mark.parametrize("name", sorted(IDENTITY_KEYS))
def test_identity_key_accepts_any_message(name: str) -> None:
    # [k]A is the identity for every k, so R = [S]B "verifies" anything: dalek (non-strict) accepts.
    key = IDENTITY_KEYS[name]
    s = int.from_bytes(os.urandom(32), "little") % L
    sig = encode(mul(s, BASE)) + s.to_bytes(32, "little")
    assert verify_ed25519ph(key, b"any message", sig, PUBLIC_SIGNATURE_CONTEXT)


def test_zero_s_with_identity_r_and_identity_key() -> None:
    sig = encode(IDENTITY) + bytes(32)
    assert verify_ed25519ph(encode(IDENTITY), b"m", sig, PUBLIC_SIGNATURE_CONTEXT)
    # R is compared as bytes: a non-canonical encoding of the same point never matches
    alias = (P + 1).to_bytes(32, "little") + bytes(32)
    assert not verify_ed25519ph(encode(IDENTITY), b"m", alias, PUBLIC_SIGNATURE_CONTEXT)


def test_order_2_key_depends_on_k_parity() -> None:
    # A = (0, -1) has order 2: [k]A is the identity iff k is even. Cofactorless: R = [S]B verifies
    # exactly when k is even; a cofactored verifier would accept both.
    key = encode((0, P - 1))
    seen = set()
    for i in range(16):
        s = (i + 1) * 7919
        sig = encode(mul(s, BASE)) + s.to_bytes(32, "little")
        k = challenge(key, sig[:32], hashlib.sha512(b"m").digest(), PUBLIC_SIGNATURE_CONTEXT)
        assert verify_ed25519ph(key, b"m", sig, PUBLIC_SIGNATURE_CONTEXT) == (k % 2 == 0)
        seen.add(k % 2)
    assert seen == {0, 1}


def test_mixed_order_key_is_cofactorless() -> None:
    # A = [a]B + T8: an honest-looking signature leaves -[k]T8 in the equation, which vanishes
    # only when 8 divides k. dalek accepts exactly those; pycryptodome's cofactored check would
    # accept all of them.
    a = int.from_bytes(hashlib.sha512(b"fixed secret").digest(), "little") % L  # deterministic
    key = encode(add(mul(a, BASE), T8))
    outcomes = set()
    for i in range(200):
        message = f"m{i}".encode()
        sig = sign_raw(a, key, message, PUBLIC_SIGNATURE_CONTEXT, 1000 + i)
        k = challenge(key, sig[:32], hashlib.sha512(message).digest(), PUBLIC_SIGNATURE_CONTEXT)
        assert verify_ed25519ph(key, message, sig, PUBLIC_SIGNATURE_CONTEXT) == (k % 8 == 0)
        outcomes.add(k % 8 == 0)
        if len(outcomes) == 2:
            break
    assert outcomes == {True, False}


def test_small_order_r_with_honest_key_rejected() -> None:
    # R a torsion point and S arbitrary: [S]B - [k]A is never a small-order point for an honest key
    key = InstallationKey.generate()
    sig = T8_BYTES + (12345).to_bytes(32, "little")
    assert not verify_ed25519ph(key.public, b"m", sig, PUBLIC_SIGNATURE_CONTEXT)


def test_fast_and_general_paths_agree_on_honest_keys() -> None:
    key = InstallationKey.generate()
    sig = key.sign_ph(b"did:plc:abc", PUBLIC_SIGNATURE_CONTEXT)
    point = decompress(key.public)
    assert point is not None
    k = challenge(key.public, sig[:32], hashlib.sha512(b"did:plc:abc").digest(), PUBLIC_SIGNATURE_CONTEXT)
    s = int.from_bytes(sig[32:], "little")
    fast = ed25519ph._recompute_r_sodium(sig[32:], k, key.public)
    assert fast == sig[:32] == ed25519ph._recompute_r_general(s, k, point)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=30, max_size=34), st.binary(max_size=80), st.binary(min_size=62, max_size=66), st.binary())
def test_random_inputs_never_raise(key: bytes, message: bytes, sig: bytes, context: bytes) -> None:
    assert verify_ed25519ph(key, message, sig, context) in (True, False)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=L - 1), st.integers(min_value=0, max_value=7), st.binary(max_size=40))
def test_paths_agree_on_any_key(secret: int, torsion: int, message: bytes) -> None:
    # keys with and without a torsion component; libsodium refuses the latter, the general path
    # must then produce the same group element the formula gives
    point = add(mul(secret, BASE), mul(torsion, T8))
    key = encode(point)
    sig = sign_raw(secret, key, message, PUBLIC_SIGNATURE_CONTEXT, 4242)
    k = challenge(key, sig[:32], hashlib.sha512(message).digest(), PUBLIC_SIGNATURE_CONTEXT)
    s = int.from_bytes(sig[32:], "little")
    expected = encode(add(mul(s, BASE), mul(k, (-point[0] % P, point[1]))))
    assert ed25519ph._recompute_r_general(s, k, point) == expected
    fast = ed25519ph._recompute_r_sodium(sig[32:], k, key)
    assert fast is None or fast == expected
    assert verify_ed25519ph(key, message, sig, PUBLIC_SIGNATURE_CONTEXT) == (expected == sig[:32])


_PYCRYPTODOME_CHANGED = (
    "pycryptodome's EccPoint no longer behaves as ed25519ph._linear_combination relies on: check "
    "its Ed25519 point validation and identity handling before moving the pycryptodome pin"
)


@pytest.mark.parametrize(
    "name",
    ["identity", "order_2", "order_4", "order_8", "honest", "mixed_order"],
)
def test_pycryptodome_arithmetic_is_what_the_general_path_relies_on(name: str) -> None:
    # The general path exists for the keys libsodium refuses, so pycryptodome must take each
    # of them as given and compute the plain group law on it, identity included.
    honest = mul(int.from_bytes(hashlib.sha256(b"honest").digest(), "little") % L, BASE)
    points: dict[str, Point] = {
        "identity": IDENTITY,
        "order_2": (0, P - 1),
        "order_4": mul(2, T8),
        "order_8": T8,
        "honest": honest,
        "mixed_order": add(honest, T8),
    }
    p = points[name]
    for s, k in [(0, 0), (0, 1), (1, 0), (1, 1), (7, 8), (L - 1, L - 1), (12345, 2**200 + 3)]:
        expected = add(mul(s, BASE), mul(k, p))
        assert ed25519ph._linear_combination(s, k, p) == expected, _PYCRYPTODOME_CHANGED
