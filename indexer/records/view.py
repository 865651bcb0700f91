"""What the API (and the change stream) shows of a binding: the family's fields plus the ones
every binding has (pure)."""

from __future__ import annotations

from typing import Any

from atmx.indexer.records.registry import BY_COLLECTION
from atmx.indexer.records.stored import StoredBinding, iso_time, text_field

__all__ = ["binding_view"]


def binding_view(b: StoredBinding) -> dict[str, Any]:
    """Record-derived fields appear only when well typed, which they always are for valid and
    verified bindings."""
    family = BY_COLLECTION.get(b.collection)
    view = family.project(b) if family is not None else {}
    view["status"] = b.status
    if b.reason is not None:
        view["reason"] = b.reason
    view["uri"] = b.uri
    view["cid"] = b.cid
    created_at = b.created_at if b.created_at is not None else text_field(b.record, "createdAt")
    if created_at is not None:
        view["createdAt"] = created_at
    view["indexedAt"] = iso_time(b.indexed_at)
    return view
