"""indexer/records/registry.py: the one list of indexed record families and what is derived from it."""

from __future__ import annotations

from atmx.indexer.records.registry import (
    BY_COLLECTION,
    COLLECTION_PREFIXES,
    COLLECTIONS,
    FAMILIES,
    ONE_RECORD_PROTOCOLS,
    PROTOCOLS,
    family_of,
    split_path,
)


def test_every_family_has_its_own_collection() -> None:
    assert len(COLLECTIONS) == len(FAMILIES) == len(set(COLLECTIONS))
    assert all(BY_COLLECTION[f.nsid] is f for f in FAMILIES)
    assert COLLECTION_PREFIXES == tuple(c + "/" for c in COLLECTIONS)


def test_protocols_in_first_seen_order() -> None:
    assert PROTOCOLS == ("xmtp", "didcomm", "germ", "catbird")
    # Catbird is a declaration and devices (two families, many records): not one record
    assert ONE_RECORD_PROTOCOLS == frozenset({"xmtp", "didcomm", "germ"})


def test_paths() -> None:
    assert split_path("org.xmtp.inbox/self") == ("org.xmtp.inbox", "self")
    assert split_path("no-slash") == ("no-slash", "")
    family = family_of("org.xmtp.inbox/self")
    assert family is not None and family.protocol == "xmtp"
    assert family_of("app.bsky.feed.post/3kaaa") is None
    assert family_of("org.xmtp.inboxes/self") is None  # a prefix of the name is not the collection


def test_legacy_families_are_still_read() -> None:
    legacy = [f for f in FAMILIES if f.legacy]
    assert [f.nsid for f in legacy] == ["blue.catbird.mlsChat.device"]
