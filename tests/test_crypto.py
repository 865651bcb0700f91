"""atproto keys (did:key, Multikey, legacy forms), ECDSA verify, and the base58btc adapter."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import coincurve
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from forge import SigningKey, high_s
from hypothesis import given
from hypothesis import strategies as st

from atmx.indexer.identity.diddoc import DidDocError, parse_did_document
from atmx.indexer.records.didcomm_keypackage import peer2_keyagreement_keys
from atmx.indexer.records.envelope import RecordError
from atmx.indexer.repo.crypto import (
    MAX_BASE58_CHARS,
    Base58Error,
    KeyParseError,
    decode_base58btc,
    encode_base58btc,
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
    secret = int.from_bytes(decode_base58btc("z" + case["privateKeyBytesBase58"]), "big")
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
    assert len(decode_base58btc(method["publicKeyMultibase"])) == 65  # uncompressed, no multicodec


def test_legacy_raw_xy_form() -> None:
    key = SigningKey.generate("p256").public_key
    uncompressed = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key.compressed).public_bytes(
        Encoding.X962, PublicFormat.UncompressedPoint
    )
    assert parse_legacy_key(encode_base58btc(uncompressed[1:]), "p256") == key
    assert parse_legacy_key(encode_base58btc(uncompressed), "p256") == key


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


_K256_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_COINCURVE_CHANGED = (
    "coincurve's PublicKey.verify no longer behaves as K256PublicKey.verify (indexer/repo/crypto.py) "
    "relies on: check its DER parsing and low-S handling before moving the coincurve pin"
)


def _der(r: int, s: int) -> bytes:
    return encode_dss_signature(r, s)


def test_coincurve_public_verify_is_what_k256_relies_on() -> None:
    # K256PublicKey.verify re-encodes r||s as DER and trusts coincurve's verify for everything
    # else: SHA-256 as the default hash, high-S refused (no normalization), r or s of 0 or >= n
    # refused by returning False rather than raising.
    signer = coincurve.PrivateKey()
    key = coincurve.PublicKey(signer.public_key.format())
    msg = b"commit bytes"
    r, s = decode_dss_signature(signer.sign(msg))
    if s > _K256_N // 2:  # coincurve signs low-S; keep the oracle independent of that
        s = _K256_N - s
    assert key.verify(_der(r, s), msg), _COINCURVE_CHANGED
    assert key.verify(_der(r, s), hashlib.sha256(msg).digest(), hasher=None), _COINCURVE_CHANGED
    for bad_r, bad_s in [
        (r, _K256_N - s),  # high-S
        (0, s),
        (r, 0),
        (_K256_N, s),
        (r, _K256_N),
        (r + _K256_N, s),  # r >= n that reduces to the right value
        (2**256 - 1, 2**256 - 1),
    ]:
        assert key.verify(_der(bad_r, bad_s), msg) is False, _COINCURVE_CHANGED
        if bad_r < 2**256:
            compact = bad_r.to_bytes(32, "big") + bad_s.to_bytes(32, "big")
            assert not parse_did_key(format_did_key("k256", key.format())).verify(msg, compact)


@pytest.mark.parametrize(
    "text",
    [
        "did:web:example.com",
        "did:key:abc",  # not base58btc
        "did:key:z0OIl",  # characters outside the base58 alphabet
        "did:key:" + encode_base58btc(b"\xed\x01" + b"\x02" * 32),  # ed25519 multicodec
        "did:key:" + encode_base58btc(b"\xe7\x01" + b"\x02" * 10),  # wrong length
        "did:key:" + encode_base58btc(b"\xe7\x01\x05" + b"\x01" * 32),  # bad SEC1 prefix
        "did:key:z" + "2" * 300,  # absurdly long
    ],
)
def test_bad_did_keys(text: str) -> None:
    with pytest.raises(KeyParseError) as e:
        parse_did_key(text)
    assert e.value.reason == "bad_key"


def test_bad_legacy_and_method_types() -> None:
    with pytest.raises(KeyParseError):
        parse_legacy_key(encode_base58btc(b"\x04" + b"\x01" * 64), "k256")  # not on the curve
    with pytest.raises(KeyParseError):
        parse_legacy_key(encode_base58btc(b"\x04" * 40), "p256")
    with pytest.raises(KeyParseError):
        parse_verification_method("Ed25519VerificationKey2020", "z6Mk")
    with pytest.raises(KeyParseError):
        parse_multikey("m" + "A" * 40)


def test_key_cache_returns_same_object() -> None:
    did_key = SigningKey.generate("k256").did_key
    assert key_from_did_key(did_key) is key_from_did_key(did_key)
    assert hash(key_from_did_key(did_key)) == hash(parse_did_key(did_key))


# --- base58btc (libipld behind encode_base58btc / decode_base58btc) ---

# Vectors from the base58 IETF draft (draft-msporny-base58) and Bitcoin's test suite.
BASE58_VECTORS = [
    (b"", ""),
    (b"\0", "1"),
    (b"\0\0\0", "111"),
    (b"Hello World!", "2NEpo7TZRRrLZSi2U"),
    (
        b"The quick brown fox jumps over the lazy dog.",
        "USm3fpXnKG5EUBx2ndxBDMPVciP5hGey2Jh4NDv6gmeo1LkMeiKrLJUUBk6Z",
    ),
    (bytes.fromhex("0000287fb4cd"), "11233QC4"),
    (bytes.fromhex("61"), "2g"),
    (bytes.fromhex("626262"), "a3gV"),
]


@pytest.mark.parametrize(("raw", "text"), BASE58_VECTORS)
def test_base58_vectors(raw: bytes, text: str) -> None:
    assert encode_base58btc(raw) == "z" + text
    assert decode_base58btc("z" + text) == raw


def test_base58_leading_zero_bytes_are_leading_ones() -> None:
    assert encode_base58btc(b"\0\0\x01") == "z112"
    assert decode_base58btc("z112") == b"\0\0\x01"
    assert decode_base58btc("z" + "1" * 40) == bytes(40)


def test_did_key_multikey_prefix() -> None:
    # A secp256k1 did:key decodes to the e7 01 multicodec prefix and a 33-byte compressed point.
    raw = decode_base58btc("zQ3shZc2QzApp2oymGvQbzP8eKheVshBHbU4ZYjeXqwSKEn6N")
    assert raw[:2] == b"\xe7\x01"
    assert len(raw) == 35
    assert raw[2] in (2, 3)


@pytest.mark.parametrize("bad", ["z0", "zO", "zI", "zl", "zabc+", "zz z", "zé", "z2\n", "z\x00"])
def test_base58_rejects_characters_outside_the_alphabet(bad: str) -> None:
    with pytest.raises(Base58Error) as e:
        decode_base58btc(bad)
    assert e.value.reason == "bad_base58"


@pytest.mark.parametrize(
    "other",
    [
        "",
        "Q3shZc2QzApp2oymGvQbzP8eKheVshBHbU4ZYjeXqwSKEn6N",  # no multibase prefix
        "Z2NEpo7TZRRrLZSi2U",  # base58flickr: another alphabet
        "mAAAA",  # base64
        "bafyreib2rxk3rh6kzwq",  # base32
        "f00ff",  # base16
    ],
)
def test_base58_rejects_other_multibase_encodings(other: str) -> None:
    with pytest.raises(Base58Error):
        decode_base58btc(other)


def test_base58_errors_are_value_errors() -> None:
    assert issubclass(Base58Error, ValueError)


def _rejects_fast(check: Any, text: str) -> float:
    start = time.perf_counter()
    with pytest.raises(ValueError):
        check(text)
    return time.perf_counter() - start


def test_hostile_lengths_are_refused_before_decoding() -> None:
    # Base58 decoding is quadratic (a megabyte would take minutes): every caller must cap the
    # length before it decodes. A valid-alphabet megabyte string is refused at once everywhere.
    huge = "z" + "2" * 1_000_000
    assert _rejects_fast(decode_base58btc, huge) < 0.05
    assert _rejects_fast(decode_base58btc, "z" + "2" * MAX_BASE58_CHARS) < 0.05
    assert _rejects_fast(parse_multikey, huge) < 0.05
    assert _rejects_fast(parse_did_key, "did:key:" + huge) < 0.05
    assert _rejects_fast(lambda t: parse_legacy_key(t, "k256"), huge) < 0.05
    did = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
    doc = {"id": did, "verificationMethod": [{"id": "#atproto", "type": "Multikey", "publicKeyMultibase": huge}]}
    assert _rejects_fast(lambda _: parse_did_document(did, doc), huge) < 0.05
    assert _rejects_fast(peer2_keyagreement_keys, "did:peer:2.E" + huge) < 0.05


def test_the_longest_string_the_callers_accept_decodes_quickly() -> None:
    # The adapter's own cap keeps the worst accepted input cheap (a did:peer:2 element is the
    # longest caller: a DID has at most 2,048 characters).
    longest = "z" + "z" * (MAX_BASE58_CHARS - 1)
    start = time.perf_counter()
    assert len(decode_base58btc(longest)) > 2900
    assert time.perf_counter() - start < 0.5


def test_capped_inputs_raise_each_callers_own_error() -> None:
    with pytest.raises(KeyParseError):
        parse_multikey("z" + "2" * 300)
    with pytest.raises(DidDocError):
        did = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
        vm = {"id": "#atproto", "type": "Multikey", "publicKeyMultibase": "z" + "2" * 200}
        parse_did_document(did, {"id": did, "verificationMethod": [vm]})
    with pytest.raises(RecordError) as e:
        peer2_keyagreement_keys("did:peer:2.Ez" + "2" * 3000)  # longer than any DID
    assert e.value.reason == "bad_did"


@given(st.binary(max_size=80))
def test_base58_roundtrip(data: bytes) -> None:
    assert decode_base58btc(encode_base58btc(data)) == data
