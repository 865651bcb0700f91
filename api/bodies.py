"""What the API answers about accounts and their bindings (pure): one place for every view."""

from __future__ import annotations

from typing import Any, Final

from atmx.indexer.records.family import AccountContext
from atmx.indexer.records.stored import iso_time
from atmx.indexer.records.view import binding_view, protocol_views
from atmx.indexer.store.queries import Binding, Identity

Body = dict[str, Any]

INVALID_HANDLE: Final = "handle.invalid"


def identity_view(identity: Identity) -> Body:
    view: Body = {
        "did": identity.did,
        "handle": identity.handle or INVALID_HANDLE,
        "accountStatus": identity.account_status or "active",
    }
    view.update(protocol_views(identity.bindings, AccountContext(mls_endpoint=identity.mls_endpoint)))
    return view


def inbox_account_view(b: Binding) -> Body:
    view: Body = {"did": b.did, "handle": b.handle or INVALID_HANDLE, "status": b.status}
    if b.reason is not None:
        view["reason"] = b.reason
    if b.xmtp_env is not None:
        view["env"] = b.xmtp_env
    if b.status == "verified" and b.verified_at is not None:
        view["verifiedAt"] = iso_time(b.verified_at)
    view["uri"] = b.uri
    view["cid"] = b.cid
    return view


def listed_binding_view(b: Binding) -> Body:
    return {
        "did": b.did,
        "handle": b.handle or INVALID_HANDLE,
        "protocol": b.protocol,
        "status": b.status,
        "uri": b.uri,
        "cid": b.cid,
        "indexedAt": iso_time(b.indexed_at),
        b.protocol: binding_view(b),
    }
