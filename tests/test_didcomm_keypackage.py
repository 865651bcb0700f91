"""at.didcomm.keyPackage record validation, with did:peer:2 DIDs built from real keys."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from atmx.indexer.records.didcomm_keypackage import (
    DidcommKeyPackage,
    peer2_keyagreement_keys,
    validate_didcomm_keypackage,
)
from atmx.indexer.records.envelope import RecordError
from atmx.indexer.repo.crypto import encode_base58btc

FIXTURES = Path(__file__).parent / "fixtures"
LEXICON = json.loads((FIXTURES / "lexicons" / "at.didcomm.keyPackage.json").read_text())

# The example DID from the did:peer method spec (one X25519 E key, two Ed25519 V keys, a service).
SPEC_EXAMPLE = (
    "did:peer:2.Ez6LSbysY2xFMRpGMhb7tFTLMpeuPRaqaWM1yECx2AtzE3KCc"
    ".Vz6MkqRYqQiSgvZQdnBytw86Qbs2ZWUkGv22od935YF4s8M7V"
    ".Vz6MkgoLTnTypo3tDRwCkZXSccTPHRLhF4ZnjhueYAFpEX6vg"
    ".SeyJ0IjoiZG0iLCJzIjoiaHR0cHM6Ly9leGFtcGxlLmNvbS9lbmRwb2ludCIsInIiOlsiZGlkOmV4YW1wbGU6c29tZW1lZGlh"
    "dG9yI3NvbWVrZXkiXSwiYSI6WyJkaWRjb21tL3YyIiwiZGlkY29tbS9haXAyO2Vudj1yZmM1ODciXX0"
)


def _x25519() -> bytes:
    return X25519PrivateKey.generate().public_key().public_bytes_raw()


def _ed25519() -> bytes:
    return Ed25519PrivateKey.generate().public_key().public_bytes_raw()


def _mb(prefix: bytes, key: bytes) -> str:
    return encode_base58btc(prefix + key)


def _service(obj: object) -> str:
    raw = json.dumps(obj, separators=(",", ":")).encode()
    return "S" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def peer2(*elements: str) -> str:
    return "did:peer:2." + ".".join(elements)


X_KEY = _x25519()
ED_KEY = _ed25519()
DID = peer2(
    "E" + _mb(b"\xec\x01", X_KEY),
    "V" + _mb(b"\xed\x01", ED_KEY),
    _service({"t": "dm", "s": {"uri": "did:web:mediator.example", "a": ["didcomm/v2"]}}),
)
DELETE = object()


def _record(**changes: object) -> dict[str, Any]:
    record: dict[str, Any] = {
        "$type": "at.didcomm.keyPackage",
        "did": DID,
        "mediators": ["did:web:mediator.example"],
        "label": "phone",
        "createdAt": "2026-11-22T09:57:49.552Z",
    }
    for key, value in changes.items():
        if value is DELETE:
            record.pop(key, None)
        else:
            record[key] = value
    return record


def _reason(record: Any, rkey: str = "self") -> str:
    with pytest.raises(RecordError) as info:
        validate_didcomm_keypackage(record, rkey)
    return str(info.value.reason)


def test_valid_record() -> None:
    pkg = validate_didcomm_keypackage(_record(), "self")
    assert pkg == DidcommKeyPackage(DID, ("did:web:mediator.example",), "phone", "2026-11-22T09:57:49.552Z", (X_KEY,))


def test_generated_did_has_the_usual_shape() -> None:
    # X25519 multikeys start z6LS, Ed25519 ones z6Mk.
    assert DID.startswith("did:peer:2.Ez6LS") and ".Vz6Mk" in DID


def test_spec_example() -> None:
    (key,) = peer2_keyagreement_keys(SPEC_EXAMPLE)
    assert len(key) == 32
    assert validate_didcomm_keypackage(_record(did=SPEC_EXAMPLE), "self").keyagreement_keys == (key,)


def test_keys_round_trip_to_usable_x25519_keys() -> None:
    alice, bob = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    did = peer2("E" + _mb(b"\xec\x01", bob.public_key().public_bytes_raw()))
    (published,) = validate_didcomm_keypackage(_record(did=did), "self").keyagreement_keys
    shared = alice.exchange(X25519PublicKey.from_public_bytes(published))
    assert shared == bob.exchange(alice.public_key())


def test_several_key_agreement_keys_in_order() -> None:
    k1, k2 = _x25519(), _x25519()
    did = peer2("E" + _mb(b"\xec\x01", k1), "V" + _mb(b"\xed\x01", ED_KEY), "E" + _mb(b"\xec\x01", k2))
    assert validate_didcomm_keypackage(_record(did=did), "self").keyagreement_keys == (k1, k2)


def test_optional_label_and_type() -> None:
    pkg = validate_didcomm_keypackage(_record(label=DELETE, **{"$type": DELETE}), "self")
    assert pkg.label is None


@pytest.mark.parametrize("rkey", ["3n2ve3cnqbc2t", "SELF", ""])
def test_bad_rkey(rkey: str) -> None:
    assert _reason(_record(), rkey) == "bad_rkey"


@pytest.mark.parametrize("value", ["org.xmtp.inbox", None, ["at.didcomm.keyPackage"]])
def test_bad_type(value: object) -> None:
    assert _reason(_record(**{"$type": value})) == "bad_type"


@pytest.mark.parametrize("field", ["did", "mediators", "createdAt"])
def test_missing_field(field: str) -> None:
    assert _reason(_record(**{field: DELETE})) == "missing_field"


_E = "E" + _mb(b"\xec\x01", X_KEY)


@pytest.mark.parametrize(
    "did",
    [
        "did:plc:nbcjflbg4exvv7izplf43elu",
        "did:peer:0z6MkqRYqQiSgvZQdnBytw86Qbs2ZWUkGv22od935YF4s8M7V",
        "did:peer:2",
        "did:peer:2.",
        "did:peer:2" + _E,  # missing the dot
        peer2(_E, ""),  # empty element
        peer2(_E, "X" + _mb(b"\xed\x01", ED_KEY)),  # unknown purpose
        peer2(_E[:1] + _E[2:]),  # no multibase prefix
        peer2("E" + "m" + base64.b64encode(b"\xec\x01" + X_KEY).decode().rstrip("=")),  # base64 multibase
        peer2(_E, "Vz0OIl"),  # not base58
        peer2(_E, "Vz"),  # empty key
        peer2(_E, "S" + "!!"),  # service not base64url
        peer2(_E, "S" + base64.urlsafe_b64encode(b"not json").decode().rstrip("=")),
        peer2(_E, _service("just a string")),
        peer2(_E, "SA"),  # impossible base64 length
        DID + " ",
        DID.upper(),
        "did:peer:2." + "E" + "z" * 3000,  # over the 2048-char DID limit
        None,
        42,
        ["did:peer:2"],
    ],
)
def test_bad_did(did: object) -> None:
    assert _reason(_record(did=did)) == "bad_did"


@pytest.mark.parametrize(
    "did",
    [
        peer2("V" + _mb(b"\xed\x01", ED_KEY)),  # authentication key only
        peer2("E" + _mb(b"\xed\x01", ED_KEY)),  # Ed25519 under E is not a key-agreement key
        peer2("E" + _mb(b"\xec\x01", X_KEY[:31])),  # short X25519 key
        peer2("E" + _mb(b"\xec\x01", X_KEY + b"\0")),  # long X25519 key
        peer2("E" + _mb(b"\x80\x24", b"\2" + X_KEY)),  # P-256 key-agreement key
        peer2("V" + _mb(b"\xec\x01", X_KEY)),  # X25519 under V
        peer2(_service({"t": "dm", "s": "https://example.com"})),
    ],
)
def test_no_x25519_key(did: str) -> None:
    assert _reason(_record(did=did)) == "no_x25519_key"


def test_devnet_placeholder_dids_are_rejected() -> None:
    index = json.loads((FIXTURES / "devnet-frames" / "index.json").read_text())
    records = [
        op["record"]
        for frame in index["frames"]
        for op in frame.get("ops", [])
        if op.get("path") == "at.didcomm.keyPackage/self" and "record" in op
    ]
    assert len(records) >= 3
    for record in records:
        # "Ez6LSe8fc51c5f7...": hex placeholders holding '0', outside the base58 alphabet
        assert _reason(record) == "bad_did"
        assert validate_didcomm_keypackage({**record, "did": DID}, "self").mediators == tuple(record["mediators"])


@pytest.mark.parametrize(
    "mediators",
    [
        [],
        "did:web:mediator.example",
        ["mediator.example"],
        ["did:web:mediator.example", None],
        ["did:web:" + "a" * 2041],
        ["did:web:m.example"] * 17,
        None,
    ],
)
def test_bad_mediators(mediators: object) -> None:
    assert _reason(_record(mediators=mediators)) == "bad_mediators"


def test_mediator_limits() -> None:
    many = [f"did:web:m{i}.example" for i in range(16)]
    assert validate_didcomm_keypackage(_record(mediators=many), "self").mediators == tuple(many)
    long = "did:web:" + "a" * 2040
    assert validate_didcomm_keypackage(_record(mediators=[long]), "self").mediators == (long,)


def test_label_limits_follow_the_lexicon() -> None:
    spec = LEXICON["defs"]["main"]["record"]["properties"]["label"]
    assert (spec["maxGraphemes"], spec["maxLength"]) == (64, 640)
    family = "👨‍👩‍👧‍👦"  # one grapheme, 7 code points, 25 UTF-8 bytes
    ok = [
        "",
        "a" * 64,
        "é" * 64,
        family * 25,  # 25 graphemes, 625 bytes
    ]
    for label in ok:
        assert validate_didcomm_keypackage(_record(label=label), "self").label == label
    bad: list[object] = [
        "a" * 65,  # 65 graphemes
        family * 26,  # 26 graphemes but 650 bytes
        None,
        5,
        "\ud800",  # lone surrogate
    ]
    for bad_label in bad:
        assert _reason(_record(label=bad_label)) == "bad_label", bad_label


@pytest.mark.parametrize("value", ["2026-11-22", "2026-11-22T09:57:49.552", "", 0, None])
def test_bad_created_at(value: object) -> None:
    assert _reason(_record(createdAt=value)) == "bad_created_at"


def test_lexicon_required_fields_match() -> None:
    main = LEXICON["defs"]["main"]
    assert main["key"] == "literal:self"
    assert set(main["record"]["required"]) == {"did", "mediators", "createdAt"}


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=80) | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
_did_like = st.builds(
    lambda parts: "did:peer:2." + ".".join(parts),
    st.lists(
        st.one_of(
            st.just(_E),
            st.text(alphabet="AEVIDSXz123abcABC_-=", max_size=50),
            st.builds(lambda b: "E" + _mb(b"\xec\x01", b), st.binary(max_size=40)),
            st.builds(lambda b: "S" + base64.urlsafe_b64encode(b).decode().rstrip("="), st.binary(max_size=40)),
        ),
        max_size=4,
    ),
)


@settings(max_examples=400)
@given(
    st.dictionaries(
        st.sampled_from(["$type", "did", "mediators", "label", "createdAt", "other"]),
        _json | _did_like | st.sampled_from([DID, ["did:web:x.example"], "2026-11-22T09:57:49Z"]),
    ),
    st.sampled_from(["self", "self", "x"]),
)
def test_arbitrary_records_only_raise_record_error(record: dict[str, Any], rkey: str) -> None:
    try:
        pkg = validate_didcomm_keypackage(record, rkey)
    except RecordError as exc:
        assert exc.reason in {
            "bad_rkey",
            "bad_type",
            "missing_field",
            "bad_did",
            "no_x25519_key",
            "bad_mediators",
            "bad_label",
            "bad_created_at",
        }
    else:
        assert pkg.keyagreement_keys and all(len(k) == 32 for k in pkg.keyagreement_keys)
