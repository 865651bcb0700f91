"""StoredBinding values for the tests of what reads them (views, API bodies)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from atmx.indexer.records.stored import StoredBinding

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
