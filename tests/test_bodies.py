"""api/bodies.py: the account views every method answers with."""

from __future__ import annotations

from stored_samples import NOW, binding

from atmx.api import bodies
from atmx.indexer.store.queries import Identity


def test_verified_at_is_only_shown_on_verified_bindings() -> None:
    stale = binding(status="pending", verified_at=NOW)
    assert "verifiedAt" not in bodies.inbox_account_view(stale)


def test_identity_view_uses_invalid_handle_and_active_status() -> None:
    identity = Identity(
        did="did:plc:x", handle=None, account_status=None, handle_lower=None, bindings=(binding("didcomm"),)
    )
    view = bodies.identity_view(identity)
    assert view["handle"] == "handle.invalid" and view["accountStatus"] == "active"
    assert set(view) == {"did", "handle", "accountStatus", "didcomm"}
