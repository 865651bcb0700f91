"""indexer/records/keys.py: which published keys are usable, and the form they are looked up in."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nacl.signing import SigningKey

from atmx.indexer.records.keys import ED25519_KEY_BYTES, is_ed25519_key, lookup_form, p256_compressed

# An order-8 torsion point: on the curve, but no honest key.
SMALL_ORDER = bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")


def test_ed25519_keys() -> None:
    honest = bytes(SigningKey.generate().verify_key)
    assert len(honest) == ED25519_KEY_BYTES and is_ed25519_key(honest)
    assert not is_ed25519_key(honest[:31])
    assert not is_ed25519_key(honest + b"\0")
    assert not is_ed25519_key(SMALL_ORDER)
    assert not is_ed25519_key(bytes(32))  # y = 0 is no point of the curve


def test_p256_either_sec1_form_gives_the_compressed_one() -> None:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    compressed = public.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    uncompressed = public.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    assert p256_compressed(compressed) == compressed
    assert p256_compressed(uncompressed) == compressed
    assert lookup_form(uncompressed) == lookup_form(compressed) == compressed


def test_not_p256_points() -> None:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    uncompressed = public.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    assert p256_compressed(b"\x06" + uncompressed[1:]) is None  # hybrid encoding
    assert p256_compressed(b"\x00") is None  # infinity
    assert p256_compressed(b"\x02" + b"\xff" * 32) is None  # x >= p
    assert p256_compressed(uncompressed[:-1] + bytes([uncompressed[-1] ^ 1])) is None  # off the curve


def test_other_keys_are_looked_up_as_given() -> None:
    ed25519 = bytes(SigningKey.generate().verify_key)
    assert lookup_form(ed25519) == ed25519
