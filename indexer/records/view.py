"""What the API (and the change stream) shows of a binding: the family's fields plus the ones
every binding has; and of an account: one object per protocol (pure)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from atmx.indexer.records.family import AccountContext, Compose, Part
from atmx.indexer.records.registry import BY_COLLECTION
from atmx.indexer.records.stored import StoredBinding, iso_time, text_field

__all__ = ["binding_view", "protocol_views"]


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


def protocol_views(bindings: Iterable[StoredBinding], account: AccountContext) -> dict[str, dict[str, Any]]:
    """protocol -> what an identity shows of it: the view of its one record or, for a protocol
    whose families compose (Catbird), one object made of all its records, in the given order."""
    views: dict[str, dict[str, Any]] = {}
    composed: dict[str, tuple[Compose, list[Part]]] = {}
    for b in bindings:
        family = BY_COLLECTION.get(b.collection)
        view = binding_view(b)
        if family is None or family.compose is None:
            views[b.protocol] = view
        else:
            composed.setdefault(family.protocol, (family.compose, []))[1].append(Part(family, b, view))
    for protocol, (compose, parts) in composed.items():
        views[protocol] = compose(parts, account)
    return views
