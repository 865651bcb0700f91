"""Catbird MLS device records (current and legacy collections), with real Ed25519, P-256 and
secp256k1 keys, and property tests over hostile values."""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

import coincurve
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from stored_samples import BASE

from atmx.indexer.records.catbird_device import (
    FAMILY,
    LEGACY_FAMILY,
    LEGACY_NSID,
    NSID,
    validate_device,
)
from atmx.indexer.records.envelope import RecordError
from atmx.indexer.records.keys import lookup_form

DELETE = object()
ED_KEY = SigningKey.generate().verify_key.encode()
_P256 = ec.generate_private_key(ec.SECP256R1()).public_key()
P256_COMPRESSED = _P256.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
P256_UNCOMPRESSED = _P256.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
K256_COMPRESSED = coincurve.PrivateKey().public_key.format(compressed=True)


def b(raw: bytes) -> dict[str, str]:
    return {"$bytes": base64.b64encode(raw).decode().rstrip("=")}


def _record(legacy: bool = False, **changes: object) -> dict[str, Any]:
    record: dict[str, Any] = {
        "$type": LEGACY_NSID if legacy else NSID,
        "mlsSignaturePublicKey": b(ED_KEY),
        "algorithm": "ed25519",
        "createdAt": "2026-09-04T00:00:00.000Z",
    }
    if legacy:
        record |= {"deviceId": "0b4e-device", "deviceName": "Josh's iPhone", "platform": "ios"}
    for key, value in changes.items():
        if value is DELETE:
            record.pop(key, None)
        else:
            record[key] = value
    return record


def _reason(record: Any, rkey: str = "00000000-0000-4000-8000-000000000001", legacy: bool = False) -> str:
    with pytest.raises(RecordError) as info:
        validate_device(record, rkey, legacy=legacy)
    return str(info.value.reason)


def test_ed25519_device() -> None:
    device = validate_device(_record(), "00000000-0000-4000-8000-000000000001")
    assert (device.algorithm, device.key, device.lookup_key) == ("ed25519", ED_KEY, ED_KEY)
    checked = FAMILY.validate(_record(), "dev")
    assert checked.status == "valid" and checked.key == ED_KEY


@pytest.mark.parametrize("raw", [P256_COMPRESSED, P256_UNCOMPRESSED])
def test_p256_device_in_either_form_is_stored_compressed(raw: bytes) -> None:
    device = validate_device(_record(algorithm="p256", mlsSignaturePublicKey=b(raw)), "dev")
    assert device.key == raw and device.lookup_key == P256_COMPRESSED
    assert lookup_form(P256_UNCOMPRESSED) == lookup_form(P256_COMPRESSED) == P256_COMPRESSED
    # the stored form is the same point
    point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), device.lookup_key)
    assert point.public_numbers() == _P256.public_numbers()


@pytest.mark.parametrize("algorithm", ["secp256k1", "k256", "ES256K", "Ed25519", "P256", "x25519", ""])
def test_other_algorithms_are_refused(algorithm: str) -> None:
    record = _record(algorithm=algorithm, mlsSignaturePublicKey=b(K256_COMPRESSED))
    assert _reason(record) == "unsupported_algorithm"


@pytest.mark.parametrize("algorithm", [None, 1, ["ed25519"]])
def test_algorithm_must_be_a_string(algorithm: object) -> None:
    assert _reason(_record(algorithm=algorithm)) == "bad_algorithm"


@given(st.binary(max_size=70).filter(lambda raw: len(raw) != 32))
def test_ed25519_key_of_wrong_length(raw: bytes) -> None:
    assert _reason(_record(mlsSignaturePublicKey=b(raw))) == "bad_key_length"


@given(st.binary(max_size=70).filter(lambda raw: len(raw) not in (33, 65)))
def test_p256_key_of_wrong_length(raw: bytes) -> None:
    assert _reason(_record(algorithm="p256", mlsSignaturePublicKey=b(raw))) == "bad_key_length"


@pytest.mark.parametrize(
    ("algorithm", "raw"),
    [
        ("ed25519", bytes(32)),  # small order
        ("ed25519", bytes([7]) * 32),  # not a point (the key a Catbird client test uses)
        ("p256", b"\x02" + bytes.fromhex("ff" * 32)),  # x >= p
        ("p256", b"\x04" + P256_UNCOMPRESSED[1:33] + bytes(32)),  # y off the curve
        ("p256", b"\x06" + P256_UNCOMPRESSED[1:]),  # hybrid encoding
        ("p256", b"\x00" * 33),
    ],
)
def test_keys_that_are_not_points(algorithm: str, raw: bytes) -> None:
    assert _reason(_record(algorithm=algorithm, mlsSignaturePublicKey=b(raw))) == "bad_key_point"


@pytest.mark.parametrize("value", ["AQID", {"$bytes": "AQI="}, {"$bytes": "AQID", "x": 1}, None, [1, 2]])
def test_key_must_be_bytes(value: object) -> None:
    assert _reason(_record(mlsSignaturePublicKey=value)) == "bad_key"


@pytest.mark.parametrize("field", ["mlsSignaturePublicKey", "algorithm", "createdAt"])
def test_missing_field(field: str) -> None:
    assert _reason(_record(**{field: DELETE})) == "missing_field"


def test_bad_created_at() -> None:
    assert _reason(_record(createdAt="2026-09-04")) == "bad_created_at"


def test_record_key_is_the_device_id_and_may_be_anything() -> None:
    for rkey in ("self", "00000000-0000-4000-8000-000000000001", "3n2ve3cnqbc2t"):
        assert validate_device(_record(), rkey).key == ED_KEY


def test_each_collection_wants_its_own_type() -> None:
    assert _reason(_record(legacy=True)) == "bad_type"
    assert _reason(_record(), legacy=True) == "bad_type"


def test_legacy_device() -> None:
    device = validate_device(_record(legacy=True), "dev", legacy=True)
    assert device.key == ED_KEY
    assert LEGACY_FAMILY.legacy and not FAMILY.legacy
    assert LEGACY_FAMILY.validate(_record(legacy=True), "dev").key == ED_KEY
    # the descriptive fields are optional, but bounded strings when present
    assert validate_device(_record(legacy=True, deviceName=DELETE, platform=DELETE), "dev", legacy=True)
    assert _reason(_record(legacy=True, deviceName="x" * 641), legacy=True) == "bad_device_field"
    assert _reason(_record(legacy=True, platform=7), legacy=True) == "bad_device_field"


def test_views() -> None:
    current = replace(BASE, collection=NSID, rkey="dev-1", protocol="catbird", record=_record())
    assert FAMILY.project(current) == {
        "deviceId": "dev-1",
        "algorithm": "ed25519",
        "mlsSignaturePublicKey": b(ED_KEY),
        "legacy": False,
    }
    old = replace(BASE, collection=LEGACY_NSID, rkey="rk", protocol="catbird", record=_record(legacy=True))
    assert LEGACY_FAMILY.project(old) == {
        "deviceId": "0b4e-device",
        "algorithm": "ed25519",
        "mlsSignaturePublicKey": b(ED_KEY),
        "legacy": True,
        "deviceName": "Josh's iPhone",
        "platform": "ios",
    }
    broken = replace(current, record={"algorithm": 5, "mlsSignaturePublicKey": "AQID"}, status="invalid")
    assert FAMILY.project(broken) == {"deviceId": "dev-1", "legacy": False}


_REASONS = {
    "bad_rkey",
    "bad_type",
    "missing_field",
    "bad_algorithm",
    "unsupported_algorithm",
    "bad_key",
    "bad_key_length",
    "bad_key_point",
    "bad_created_at",
    "bad_device_field",
}
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_keys = st.sampled_from([b(ED_KEY), b(P256_COMPRESSED), b(P256_UNCOMPRESSED), b(K256_COMPRESSED)]) | st.builds(
    b, st.binary(max_size=70)
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(["$type", "mlsSignaturePublicKey", "algorithm", "createdAt", "deviceName", "x"]),
        _json | _keys | st.sampled_from(["ed25519", "p256", "secp256k1", "2026-09-04T00:00:00Z", NSID]),
    ),
    st.booleans(),
)
def test_arbitrary_records_only_raise_record_error(record: dict[str, Any], legacy: bool) -> None:
    try:
        device = validate_device(record, "dev", legacy=legacy)
    except RecordError as exc:
        assert exc.reason in _REASONS
    else:
        assert device.algorithm in ("ed25519", "p256")
        assert len(device.lookup_key) == (32 if device.algorithm == "ed25519" else 33)
