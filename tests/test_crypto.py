from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import coincurve
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from forge import SigningKey, high_s
from hypothesis import given
from hypothesis import strategies as st

from atmx.indexer.repo.crypto import (
    KeyParseError,
    b58decode,
    b58encode,
    format_did_key,
    key_from_did_key,
    parse_did_key,
    parse_legacy_key,
    parse_multikey,
    parse_verification_method,
)

FIXTURES = Path(__file__).parent / "fixtures"
CRYPTO = FIXTURES / "interop" / "crypto"


def _b64(s: str) -> bytes:
    return base64.b64decode(s + "=" * (-len(s) % 4))


SIG_CASES: list[dict[str, Any]] = json.loads((CRYPTO / "signature-fixtures.json").read_text())


@pytest.mark.parametrize("case", SIG_CASES, ids=[c["comment"] for c in SIG_CASES])
def test_signature_fixtures(case: dict[str, Any]) -> None:
    curve = "p256" if case["algorithm"] == "ES256" else "k256"
    key = parse_did_key(case["publicKeyDid"])
    assert key.curve == curve
    legacy = parse_legacy_key(case["publicKeyMultibase"], curve)
    assert legacy == key
    assert parse_verification_method(case["didDocSuite"], case["publicKeyMultibase"]) == key
    assert key.verify(_b64(case["messageBase64"]), _b64(case["signatureBase64"])) is case["validSignature"]


def test_fixture_negatives_cover_high_s_and_der() -> None:
    tags = {t for c in SIG_CASES if not c["validSignature"] for t in c["tags"]}
    assert {"high-s", "der-encoded"} <= tags


@pytest.mark.parametrize("case", json.loads((CRYPTO / "w3c_didkey_K256.json").read_text()))
def test_w3c_didkey_k256(case: dict[str, str]) -> None:
    public = coincurve.PrivateKey(bytes.fromhex(case["privateKeyBytesHex"])).public_key
    assert format_did_key("k256", public.format(compressed=True)) == case["publicDidKey"]
    assert format_did_key("k256", public.format(compressed=False)) == case["publicDidKey"]
    assert parse_did_key(case["publicDidKey"]).compressed == public.format(compressed=True)


@pytest.mark.parametrize("case", json.loads((CRYPTO / "w3c_didkey_P256.json").read_text()))
def test_w3c_didkey_p256(case: dict[str, str]) -> None:
    secret = int.from_bytes(b58decode(case["privateKeyBytesBase58"]), "big")
    public = ec.derive_private_key(secret, ec.SECP256R1()).public_key()
    compressed = public.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    assert format_did_key("p256", compressed) == case["publicDidKey"]
    key = parse_did_key(case["publicDidKey"])
    assert key.curve == "p256" and key.compressed == compressed
    assert key.did_key == case["publicDidKey"]


def test_devnet_legacy_key_matches_plc_did_key() -> None:
    plc = json.loads((FIXTURES / "devnet-frames" / "plc-alice.json").read_text())
    method = plc["GET /<did>"]["verificationMethod"][0]
    key = parse_verification_method(method["type"], method["publicKeyMultibase"])
    assert key.did_key == plc["GET /<did>/data"]["verificationMethods"]["atproto"]
    assert len(b58decode(method["publicKeyMultibase"][1:])) == 65  # uncompressed, no multicodec


def test_legacy_raw_xy_form() -> None:
    key = SigningKey.generate("p256").public_key
    uncompressed = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key.compressed).public_bytes(
        Encoding.X962, PublicFormat.UncompressedPoint
    )
    assert parse_legacy_key("z" + b58encode(uncompressed[1:]), "p256") == key
    assert parse_legacy_key("z" + b58encode(uncompressed), "p256") == key


@pytest.mark.parametrize("curve", ["k256", "p256"])
def test_sign_verify_and_rejections(curve: Any) -> None:
    signer = SigningKey.generate(curve)
    key = signer.public_key
    msg = b"commit bytes"
    sig = signer.sign(msg)
    assert len(sig) == 64 and key.verify(msg, sig)
    assert not key.verify(msg + b"!", sig)
    assert not key.verify(msg, high_s(sig, curve)), "high-S must be rejected"
    assert not key.verify(msg, sig[:63])
    assert not key.verify(msg, sig + b"\0")
    assert not key.verify(msg, b"\0" * 64)
    assert not key.verify(msg, b"\xff" * 64)  # r, s >= n
    assert not SigningKey.generate(curve).public_key.verify(msg, sig)


def test_der_signatures_rejected() -> None:
    k = coincurve.PrivateKey()
    der = k.sign(b"m")  # coincurve's default output is DER
    assert k.public_key.verify(der, b"m")
    assert not parse_did_key(format_did_key("k256", k.public_key.format())).verify(b"m", der)
    p = ec.generate_private_key(ec.SECP256R1())
    pder = p.sign(b"m", ec.ECDSA(hashes.SHA256()))
    compressed = p.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    assert not parse_did_key(format_did_key("p256", compressed)).verify(b"m", pder)


@pytest.mark.parametrize(
    "text",
    [
        "did:web:example.com",
        "did:key:abc",  # not base58btc
        "did:key:z0OIl",  # characters outside the base58 alphabet
        "did:key:z" + b58encode(b"\xed\x01" + b"\x02" * 32),  # ed25519 multicodec
        "did:key:z" + b58encode(b"\xe7\x01" + b"\x02" * 10),  # wrong length
        "did:key:z" + b58encode(b"\xe7\x01\x05" + b"\x01" * 32),  # bad SEC1 prefix
        "did:key:z" + "2" * 300,  # absurdly long
    ],
)
def test_bad_did_keys(text: str) -> None:
    with pytest.raises(KeyParseError) as e:
        parse_did_key(text)
    assert e.value.reason == "bad_key"


def test_bad_legacy_and_method_types() -> None:
    with pytest.raises(KeyParseError):
        parse_legacy_key("z" + b58encode(b"\x04" + b"\x01" * 64), "k256")  # not on the curve
    with pytest.raises(KeyParseError):
        parse_legacy_key("z" + b58encode(b"\x04" * 40), "p256")
    with pytest.raises(KeyParseError):
        parse_verification_method("Ed25519VerificationKey2020", "z6Mk")
    with pytest.raises(KeyParseError):
        parse_multikey("m" + "A" * 40)


def test_key_cache_returns_same_object() -> None:
    did_key = SigningKey.generate("k256").did_key
    assert key_from_did_key(did_key) is key_from_did_key(did_key)
    assert hash(key_from_did_key(did_key)) == hash(parse_did_key(did_key))


@given(st.binary(max_size=64))
def test_base58_roundtrip(data: bytes) -> None:
    assert b58decode(b58encode(data)) == data
