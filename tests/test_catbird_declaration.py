"""blue.catbird.chat.declaration validation, and the `catbird` object an identity shows (the
declaration, the devices, the delivery service in Catbird's resolution order)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stored_samples import BASE

from atmx.indexer.records.catbird_declaration import (
    ALLOW_INCOMING,
    FAMILY,
    CatbirdDeclaration,
    validate_catbird_declaration,
)
from atmx.indexer.records.catbird_device import FAMILY as DEVICE
from atmx.indexer.records.catbird_device import LEGACY_FAMILY as LEGACY_DEVICE
from atmx.indexer.records.envelope import RecordError
from atmx.indexer.records.family import AccountContext
from atmx.indexer.records.stored import StoredBinding
from atmx.indexer.records.view import protocol_views

DELETE = object()
# the declaration a Catbird client test publishes
CLIENT_EXAMPLE = {
    "$type": "blue.catbird.chat.declaration",
    "allowIncoming": "none",
    "deliveryService": "did:web:chat.catbird.blue",
    "protocolVersion": "1",
    "createdAt": "2026-06-27T00:00:00.000Z",
}


def _record(**changes: object) -> dict[str, Any]:
    record = dict(CLIENT_EXAMPLE)
    for key, value in changes.items():
        if value is DELETE:
            record.pop(key, None)
        else:
            record[key] = value
    return record


def _reason(record: Any, rkey: str = "self") -> str:
    with pytest.raises(RecordError) as info:
        validate_catbird_declaration(record, rkey)
    return str(info.value.reason)


def test_client_example_is_valid() -> None:
    assert validate_catbird_declaration(_record(), "self") == CatbirdDeclaration(
        "none", "did:web:chat.catbird.blue", "1", "2026-06-27T00:00:00.000Z"
    )
    assert FAMILY.validate(_record(), "self").status == "valid"


@pytest.mark.parametrize("allow", sorted(ALLOW_INCOMING))
def test_known_policies(allow: str) -> None:
    assert validate_catbird_declaration(_record(allowIncoming=allow), "self").allow_incoming == allow


@given(st.text(max_size=20).filter(lambda s: s not in ALLOW_INCOMING))
def test_any_other_policy_fails_closed(allow: str) -> None:
    assert _reason(_record(allowIncoming=allow)) == "bad_allow_incoming"


@pytest.mark.parametrize("allow", [None, 1, ["all"], {"all": True}, "All", "everyone"])
def test_bad_policy_values(allow: object) -> None:
    assert _reason(_record(allowIncoming=allow)) == "bad_allow_incoming"


@pytest.mark.parametrize(
    "service",
    [
        "did:web:chat.catbird.blue#atproto_mls",
        "https://chat.catbird.blue",
        "chat.catbird.blue",
        "did:web:",
        "",
        None,
        ["did:web:chat.catbird.blue"],
    ],
)
def test_delivery_service_must_be_a_did_without_fragment(service: object) -> None:
    assert _reason(_record(deliveryService=service)) == "bad_delivery_service"


@pytest.mark.parametrize("version", ["2", "1.0", 1, None, ""])
def test_protocol_version_must_be_1(version: object) -> None:
    assert _reason(_record(protocolVersion=version)) == "bad_protocol_version"


@pytest.mark.parametrize("value", ["2026-06-27", "yesterday", 0, None])
def test_bad_created_at(value: object) -> None:
    assert _reason(_record(createdAt=value)) == "bad_created_at"


@pytest.mark.parametrize("field", ["allowIncoming", "deliveryService", "protocolVersion", "createdAt"])
def test_missing_field(field: str) -> None:
    assert _reason(_record(**{field: DELETE})) == "missing_field"


@pytest.mark.parametrize("rkey", ["3n2ve3cnqbc2t", "Self"])
def test_rkey_must_be_self(rkey: str) -> None:
    assert _reason(_record(), rkey) == "bad_rkey"


def test_wrong_type_is_refused() -> None:
    assert _reason(_record(**{"$type": "blue.catbird.mlsChat.declaration"})) == "bad_type"


_REASONS = {
    "bad_rkey",
    "bad_type",
    "missing_field",
    "bad_allow_incoming",
    "bad_delivery_service",
    "bad_protocol_version",
    "bad_created_at",
}
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(["$type", "allowIncoming", "deliveryService", "protocolVersion", "createdAt", "x"]),
        _json | st.sampled_from(["all", "following", "did:web:x.example", "1", "2026-06-27T00:00:00Z"]),
    ),
    st.sampled_from(["self", "self", "x"]),
)
def test_arbitrary_records_only_raise_record_error(record: dict[str, Any], rkey: str) -> None:
    try:
        declaration = validate_catbird_declaration(record, rkey)
    except RecordError as exc:
        assert exc.reason in _REASONS
    else:
        assert declaration.allow_incoming in ALLOW_INCOMING and declaration.protocol_version == "1"


# --- the composed `catbird` object -------------------------------------------------------------


def stored(family_nsid: str, rkey: str, record: Any, status: str = "valid", reason: str | None = None) -> StoredBinding:
    return replace(
        BASE,
        collection=family_nsid,
        rkey=rkey,
        protocol="catbird",
        uri=f"at://did:plc:x/{family_nsid}/{rkey}",
        record=record,
        status=status,
        reason=reason,
        created_at=record.get("createdAt") if isinstance(record, dict) else None,
    )


DEVICE_RECORD = {
    "$type": "blue.catbird.chat.device",
    "algorithm": "ed25519",
    "mlsSignaturePublicKey": {"$bytes": "AQID"},
    "createdAt": "2026-09-04T00:00:00.000Z",
}


def test_identity_shows_declaration_devices_and_delivery_service() -> None:
    bindings = [
        stored(FAMILY.nsid, "self", _record()),
        stored(DEVICE.nsid, "dev-1", DEVICE_RECORD),
        stored(DEVICE.nsid, "dev-2", {**DEVICE_RECORD, "algorithm": "secp256k1"}, "invalid", "unsupported_algorithm"),
        stored(LEGACY_DEVICE.nsid, "old", {**DEVICE_RECORD, "deviceName": "iPad", "platform": "ios"}),
    ]
    catbird = protocol_views(bindings, AccountContext())["catbird"]
    assert catbird["declaration"]["allowIncoming"] == "none" and catbird["declaration"]["status"] == "valid"
    assert [d["deviceId"] for d in catbird["devices"]] == ["dev-1", "dev-2", "old"]
    assert [d["legacy"] for d in catbird["devices"]] == [False, False, True]
    assert catbird["devices"][1]["reason"] == "unsupported_algorithm"
    assert catbird["devices"][2]["deviceName"] == "iPad" and catbird["devices"][2]["platform"] == "ios"
    assert catbird["devices"][0]["mlsSignaturePublicKey"] == {"$bytes": "AQID"}
    assert catbird["deliveryService"] == {"source": "declaration", "did": "did:web:chat.catbird.blue"}


def test_did_document_service_comes_before_the_declaration() -> None:
    bindings = [stored(FAMILY.nsid, "self", _record())]
    catbird = protocol_views(bindings, AccountContext(mls_endpoint="https://mls.example.com"))["catbird"]
    assert catbird["deliveryService"] == {"source": "didDocument", "endpoint": "https://mls.example.com"}


def test_an_invalid_declaration_names_no_delivery_service() -> None:
    bad = _record(allowIncoming="maybe")
    catbird = protocol_views([stored(FAMILY.nsid, "self", bad, "invalid", "bad_allow_incoming")], AccountContext())[
        "catbird"
    ]
    assert catbird["declaration"]["reason"] == "bad_allow_incoming" and "deliveryService" not in catbird
    assert catbird["devices"] == []


def test_devices_without_a_declaration() -> None:
    catbird = protocol_views([stored(DEVICE.nsid, "dev-1", DEVICE_RECORD)], AccountContext())["catbird"]
    assert "declaration" not in catbird and "deliveryService" not in catbird
    assert len(catbird["devices"]) == 1
