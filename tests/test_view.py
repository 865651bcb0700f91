"""records/view.py: what the API shows of a binding, whatever the stored record holds."""

from __future__ import annotations

from datetime import timedelta, timezone

from stored_samples import NOW, binding

from atmx.indexer.records.view import binding_view


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
