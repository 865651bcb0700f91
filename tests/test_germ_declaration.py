"""com.germnetwork.declaration validation: the published lexicon, a record Germ's client made,
records built from real Ed25519 keys, and property tests over hostile values."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_core_ed25519_add
from nacl.signing import SigningKey
from stored_samples import BASE

from atmx.indexer.records.envelope import RecordError
from atmx.indexer.records.germ_declaration import (
    ED25519_SIGNING,
    FAMILY,
    KEY_ALGORITHMS,
    MAX_CONTINUITY_PROOFS,
    MAX_KEY_PACKAGE_BYTES,
    MAX_MESSAGE_ME_URL_BYTES,
    SHOW_BUTTON_TO,
    validate_germ_declaration,
)

FIXTURES = Path(__file__).parent / "fixtures"
LEXICON = json.loads((FIXTURES / "lexicons" / "com.germnetwork.declaration.json").read_text())
PUBLISHED = json.loads((FIXTURES / "germ" / "declaration.json").read_text())
DELETE = object()

# The eight points of order dividing 8 (libsodium's blocklist): never an honest a*B.
SMALL_ORDER = [
    bytes.fromhex(h)
    for h in (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    )
]


def b(raw: bytes) -> dict[str, str]:
    return {"$bytes": base64.b64encode(raw).decode().rstrip("=")}


def typed(key: bytes, algorithm: int = ED25519_SIGNING) -> dict[str, str]:
    return b(bytes((algorithm,)) + key)


SIGNER = SigningKey.generate()
KEY = SIGNER.verify_key.encode()


def _record(**changes: object) -> dict[str, Any]:
    record: dict[str, Any] = {
        "$type": "com.germnetwork.declaration",
        "version": "1.1.0",
        "currentKey": typed(KEY),
        "messageMe": {"messageMeUrl": "https://landing.ger.mx/newUser", "showButtonTo": "everyone"},
        "keyPackage": b(b"\x00" * 489),
        "continuityProofs": [b(b"\x01" * 98)],
    }
    for key, value in changes.items():
        if value is DELETE:
            record.pop(key, None)
        else:
            record[key] = value
    return record


def _reason(record: Any, rkey: str = "self") -> str:
    with pytest.raises(RecordError) as info:
        validate_germ_declaration(record, rkey)
    return str(info.value.reason)


def _view(record: Any, status: str = "valid") -> dict[str, Any]:
    stored = replace(BASE, collection=FAMILY.nsid, protocol="germ", record=record, status=status)
    return FAMILY.project(stored)


def test_a_record_made_by_germs_client_is_valid() -> None:
    declaration = validate_germ_declaration(PUBLISHED, "self")
    assert declaration.version == "1.1.0"
    assert declaration.current_key == base64.b64decode(PUBLISHED["currentKey"]["$bytes"])[1:]
    assert len(declaration.key_package or b"") == 489
    checked = FAMILY.validate(PUBLISHED, "self")
    assert checked.status == "valid" and checked.key == declaration.current_key
    view = _view(PUBLISHED)
    assert view["currentKey"] == PUBLISHED["currentKey"] and view["keyAlgorithm"] == "ed25519"
    assert view["keyPackage"] == {"size": 489, "checked": False}
    assert view["messageMe"] == {
        "messageMeUrl": "https://landing.ger.mx/newUser",
        "showButtonTo": "usersIFollow",
        "showButtonToKnown": True,
    }
    assert view["continuityProofs"] == 0


def test_the_key_published_is_the_key_that_verifies() -> None:
    declaration = validate_germ_declaration(_record(), "self")
    signed = SIGNER.sign(b"AnchorSuccession")
    from nacl.signing import VerifyKey

    assert VerifyKey(declaration.current_key).verify(signed) == b"AnchorSuccession"
    assert FAMILY.validate(_record(), "self").key == KEY


def test_limits_follow_the_lexicon() -> None:
    main = LEXICON["defs"]["main"]
    assert main["key"] == "literal:self" and set(main["record"]["required"]) == {"version", "currentKey"}
    props = main["record"]["properties"]
    assert (props["version"]["minLength"], props["version"]["maxLength"]) == (5, 14)
    assert props["continuityProofs"]["maxLength"] == MAX_CONTINUITY_PROOFS
    message_me = LEXICON["defs"]["messageMe"]["properties"]
    assert message_me["messageMeUrl"]["maxLength"] == MAX_MESSAGE_ME_URL_BYTES
    assert set(message_me["showButtonTo"]["knownValues"]) == SHOW_BUTTON_TO


@pytest.mark.parametrize("rkey", ["3n2ve3cnqbc2t", "SELF", ""])
def test_rkey_must_be_self(rkey: str) -> None:
    assert _reason(_record(), rkey) == "bad_rkey"


@pytest.mark.parametrize("field", ["version", "currentKey"])
def test_missing_required_field(field: str) -> None:
    assert _reason(_record(**{field: DELETE})) == "missing_field"


def test_optional_fields_may_be_absent() -> None:
    declaration = validate_germ_declaration(
        _record(messageMe=DELETE, keyPackage=DELETE, continuityProofs=DELETE, **{"$type": DELETE}), "self"
    )
    assert (declaration.message_me, declaration.key_package, declaration.continuity_proofs) == (None, None, ())


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6))
def test_semver_versions(major: int, minor: int, patch: int) -> None:
    version = f"{major}.{minor}.{patch}"
    if 5 <= len(version) <= 14:
        assert validate_germ_declaration(_record(version=version), "self").version == version
    else:
        assert _reason(_record(version=version)) == "bad_version"


@pytest.mark.parametrize("version", ["1.1", "1.1.0-beta", "1.1.0+build", "01.1.0", "v1.1.0", "1.1.0 ", 110, None])
def test_bad_version(version: object) -> None:
    assert _reason(_record(version=version)) == "bad_version"


@given(st.integers(0, 255))
def test_only_the_signing_algorithm_byte_is_accepted(algorithm: int) -> None:
    record = _record(currentKey=typed(KEY, algorithm))
    if algorithm == ED25519_SIGNING:
        assert validate_germ_declaration(record, "self").current_key == KEY
    elif algorithm in KEY_ALGORITHMS:
        assert _reason(record) == "not_signing_key"  # ChaCha20, X25519, HPKE, ...: not signing keys
    else:
        assert _reason(record) == "unknown_key_algorithm"


@given(st.binary(max_size=80).filter(lambda raw: len(raw) != 32))
def test_wrong_key_length(raw: bytes) -> None:
    assert _reason(_record(currentKey=typed(raw))) == "bad_key_length"


@pytest.mark.parametrize("point", SMALL_ORDER)
def test_small_order_points_are_refused(point: bytes) -> None:
    assert _reason(_record(currentKey=typed(point))) == "bad_key_point"


@pytest.mark.parametrize("point", SMALL_ORDER[1:])
def test_a_key_with_a_torsion_component_is_refused(point: bytes) -> None:
    # on the curve and canonical, but outside the prime-order subgroup every a*B lies in
    assert _reason(_record(currentKey=typed(crypto_core_ed25519_add(KEY, point)))) == "bad_key_point"


def test_non_canonical_encoding_is_refused() -> None:
    p = 2**255 - 19
    assert _reason(_record(currentKey=typed((p + 1).to_bytes(32, "little")))) == "bad_key_point"


@pytest.mark.parametrize(
    "value",
    [
        "AjNk",  # a string, not bytes
        [2, 1],
        {"$bytes": "AjNk", "extra": 1},
        {"$bytes": 5},
        {"$bytes": "Aj=="},  # padded
        {"$bytes": "A"},  # impossible length
        {"$bytes": "Aw-_"},  # base64url alphabet
        {"$bytes": "Ax"},  # non-zero padding bits
        {"$bytes": ""},  # empty
    ],
)
def test_current_key_must_be_canonical_bytes(value: object) -> None:
    assert _reason(_record(currentKey=value)) == "bad_current_key"


@pytest.mark.parametrize(
    "url",
    ["https://landing.ger.mx/newUser", "https://landing.ger.mx/newUser#", "https://a.example/x?y=1", "germ:chat"],
)
def test_message_me_url_without_or_with_an_empty_fragment(url: str) -> None:
    message_me = {"messageMeUrl": url, "showButtonTo": "usersIFollow"}
    assert validate_germ_declaration(_record(messageMe=message_me), "self").message_me is not None


@pytest.mark.parametrize("url", ["https://landing.ger.mx/newUser#did:plc:a+did:plc:b", "https://x.example/##"])
def test_message_me_url_with_a_fragment(url: str) -> None:
    assert _reason(_record(messageMe={"messageMeUrl": url, "showButtonTo": "everyone"})) == "message_me_url_fragment"


@pytest.mark.parametrize(
    "url",
    ["", "landing.ger.mx/newUser", "https://x.example/a b", "https:/x", "1http://x", "https://é.example", None, 5],
)
def test_message_me_url_must_be_a_uri(url: object) -> None:
    assert _reason(_record(messageMe={"messageMeUrl": url, "showButtonTo": "everyone"})) == "bad_message_me_url"


def test_message_me_url_length_limit() -> None:
    head = "https://x.example/"
    ok = head + "a" * (MAX_MESSAGE_ME_URL_BYTES - len(head))
    assert validate_germ_declaration(_record(messageMe={"messageMeUrl": ok, "showButtonTo": "everyone"}), "self")
    long = ok + "a"
    assert _reason(_record(messageMe={"messageMeUrl": long, "showButtonTo": "everyone"})) == "bad_message_me_url"


def test_unknown_show_button_to_is_kept_but_flagged() -> None:
    record = _record(messageMe={"messageMeUrl": "https://x.example/", "showButtonTo": "mutuals"})
    assert validate_germ_declaration(record, "self").message_me is not None
    assert _view(record)["messageMe"]["showButtonToKnown"] is False


@pytest.mark.parametrize("show", ["", "a" * 101, None, 1])
def test_bad_show_button_to(show: object) -> None:
    assert _reason(_record(messageMe={"messageMeUrl": "https://x.example/", "showButtonTo": show})) == (
        "bad_show_button_to"
    )


@pytest.mark.parametrize(
    "message_me",
    ["https://x.example/", {"messageMeUrl": "https://x.example/"}, {"showButtonTo": "everyone"}, [], None],
)
def test_bad_message_me(message_me: object) -> None:
    assert _reason(_record(messageMe=message_me)) == "bad_message_me"


def test_key_package_bounds() -> None:
    at_limit = _record(keyPackage=b(b"\x07" * MAX_KEY_PACKAGE_BYTES))
    assert len(validate_germ_declaration(at_limit, "self").key_package or b"") == MAX_KEY_PACKAGE_BYTES
    assert _reason(_record(keyPackage=b(b"\x07" * (MAX_KEY_PACKAGE_BYTES + 1)))) == "key_package_too_large"
    assert _reason(_record(keyPackage=b(b""))) == "bad_key_package"
    assert _reason(_record(keyPackage="AAAA")) == "bad_key_package"


def test_continuity_proofs() -> None:
    many = [b(bytes((i % 256,))) for i in range(MAX_CONTINUITY_PROOFS)]
    assert len(validate_germ_declaration(_record(continuityProofs=many), "self").continuity_proofs) == 1000
    assert _view(_record(continuityProofs=many))["continuityProofs"] == 1000
    assert _reason(_record(continuityProofs=[*many, b(b"x")])) == "bad_continuity_proofs"
    assert _reason(_record(continuityProofs=[b(b"x"), "eA"])) == "bad_continuity_proofs"
    assert _reason(_record(continuityProofs=b(b"x"))) == "bad_continuity_proofs"


def test_invalid_record_shows_only_well_formed_fields() -> None:
    record = _record(currentKey=typed(KEY, 1), version=7, keyPackage="nope", continuityProofs="nope")
    view = _view(record, status="invalid")
    assert view == {
        "messageMe": {
            "messageMeUrl": "https://landing.ger.mx/newUser",
            "showButtonTo": "everyone",
            "showButtonToKnown": True,
        }
    }
    assert _view("not a map", status="invalid") == {"continuityProofs": 0}


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
_bytes_like = st.builds(b, st.binary(max_size=40)) | st.builds(lambda raw: typed(raw), st.binary(max_size=40))
_REASONS = {
    "bad_rkey",
    "bad_type",
    "missing_field",
    "bad_version",
    "bad_current_key",
    "unknown_key_algorithm",
    "not_signing_key",
    "bad_key_length",
    "bad_key_point",
    "bad_message_me",
    "bad_message_me_url",
    "message_me_url_fragment",
    "bad_show_button_to",
    "bad_key_package",
    "key_package_too_large",
    "bad_continuity_proofs",
}


# the shared test machine can be slow to draw nested values: no time-based health check
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(["$type", "version", "currentKey", "messageMe", "keyPackage", "continuityProofs", "x"]),
        _json | _bytes_like | st.sampled_from(["1.0.0", typed(KEY), [typed(KEY)], {"messageMeUrl": "a:b"}]),
    ),
    st.sampled_from(["self", "self", "x"]),
)
def test_arbitrary_records_only_raise_record_error(record: dict[str, Any], rkey: str) -> None:
    try:
        declaration = validate_germ_declaration(record, rkey)
    except RecordError as exc:
        assert exc.reason in _REASONS
        assert set(_view(record, status="invalid")) <= {
            "version",
            "currentKey",
            "keyAlgorithm",
            "messageMe",
            "keyPackage",
            "continuityProofs",
        }
    else:
        assert len(declaration.current_key) == 32
        assert _view(record)["currentKey"] == typed(declaration.current_key)
