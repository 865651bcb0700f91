"""Every record family atmx indexes, in one list (pure). Adding a family is one module and
one line here: the pre-filter, the pipeline, backfill, the API and the status page all read
this registry."""

from __future__ import annotations

from typing import Final

from atmx.indexer.records import (
    catbird_declaration,
    catbird_device,
    didcomm_keypackage,
    germ_declaration,
    xmtp_inbox,
)
from atmx.indexer.records.family import Family

__all__ = [
    "BY_COLLECTION",
    "COLLECTIONS",
    "COLLECTION_PREFIXES",
    "FAMILIES",
    "ONE_RECORD_PROTOCOLS",
    "PROTOCOLS",
    "family_of",
    "split_path",
]

FAMILIES: Final[tuple[Family, ...]] = (
    xmtp_inbox.FAMILY,
    didcomm_keypackage.FAMILY,
    germ_declaration.FAMILY,
    catbird_declaration.FAMILY,
    catbird_device.FAMILY,
    catbird_device.LEGACY_FAMILY,
)
BY_COLLECTION: Final = {f.nsid: f for f in FAMILIES}
COLLECTIONS: Final = tuple(BY_COLLECTION)
COLLECTION_PREFIXES: Final = tuple(c + "/" for c in COLLECTIONS)
PROTOCOLS: Final = tuple(dict.fromkeys(f.protocol for f in FAMILIES))
# protocols an account has at most one record of (one family, rkey self): XMTP, DIDComm, Germ
ONE_RECORD_PROTOCOLS: Final = frozenset(
    p for p in PROTOCOLS if [f.single for f in FAMILIES if f.protocol == p] == [True]
)


def split_path(path: str) -> tuple[str, str]:
    """(collection, rkey) of a repo path."""
    collection, _, rkey = path.partition("/")
    return collection, rkey


def family_of(path: str) -> Family | None:
    """The family a repo path belongs to, or None outside the indexed collections."""
    return BY_COLLECTION.get(path.partition("/")[0])
