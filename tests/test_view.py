"""records/view.py: what the API shows of a binding, whatever the stored record holds."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from atmx.indexer.records.stored import StoredBinding
from atmx.indexer.records.view import binding_view

NOW = datetime(2026, 3, 4, 5, 6, 7, 891234, tzinfo=UTC)
BASE = StoredBinding(
    did="did:plc:x",
    collection="org.xmtp.inbox",
    rkey="self",
    protocol="xmtp",
    uri="at://did:plc:x/org.xmtp.inbox/self",
    cid="bafy",
    rev="3kaaaaaaaaa22",
    record={},
    status="valid",
    reason=None,
    xmtp_inbox_id=None,
    xmtp_env=None,
    xmtp_installation=None,
    created_at=None,
    indexed_at=NOW,
    verified_at=None,
)
COLLECTION = {"xmtp": "org.xmtp.inbox", "didcomm": "at.didcomm.keyPackage"}


def binding(protocol: str = "xmtp", **changes: Any) -> StoredBinding:
    collection = COLLECTION[protocol]
    return replace(BASE, protocol=protocol, collection=collection, uri=f"at://did:plc:x/{collection}/self", **changes)


def test_xmtp_view_of_a_malformed_record_keeps_only_well_typed_fields() -> None:
    view = binding_view(
        binding(record={"id": 5, "verificationSignature": None, "createdAt": []}, status="invalid", reason="bad")
    )
    assert view == {
        "status": "invalid",
        "reason": "bad",
        "uri": "at://did:plc:x/org.xmtp.inbox/self",
        "cid": "bafy",
        "indexedAt": "2026-03-04T05:06:07.891Z",
    }
    assert binding_view(binding("didcomm", record=["x"]))["status"] == "valid"
    assert "mediators" not in binding_view(binding("didcomm", record={"mediators": ["a", 1]}))


def test_verified_at_is_only_shown_on_verified_bindings() -> None:
    stale = binding(status="pending", verified_at=NOW)
    assert "verifiedAt" not in binding_view(stale)
    fresh = binding(status="verified", verified_at=NOW.astimezone(timezone(timedelta(hours=-5))))
    assert binding_view(fresh)["verifiedAt"] == "2026-03-04T05:06:07.891Z"
