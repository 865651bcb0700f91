"""indexer/identity/cache.py: the memory LRU and the reading of persistent DID cache rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from atmx.indexer.identity.cache import CachedDid, DidEntry, Lru, entry_from_store

DID_DOCS: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).parent / "fixtures" / "devnet-frames" / "did-docs.json").read_text()
)
ALICE = "did:plc:nbcjflbg4exvv7izplf43elu"
FETCHED = datetime(2026, 11, 1, tzinfo=UTC)


def test_lru_forgets_the_least_recently_used() -> None:
    lru: Lru[int] = Lru(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # a is now the most recent
    lru.put("c", 3)
    assert (lru.get("a"), lru.get("b"), lru.get("c"), len(lru)) == (1, None, 3, 2)
    assert lru.pop("a") == 1 and lru.pop("a") is None and len(lru) == 1


def test_lru_put_of_a_known_key_refreshes_it() -> None:
    lru: Lru[int] = Lru(2)
    lru.put("a", 1)
    lru.put("b", 2)
    lru.put("a", 10)
    lru.put("c", 3)
    assert (lru.get("a"), lru.get("b")) == (10, None)


def test_a_stored_document_expires_as_if_fetched_when_the_row_was() -> None:
    entry = entry_from_store(ALICE, CachedDid(DID_DOCS[ALICE], None, FETCHED), hit_ttl=100.0, error_ttl=5.0)
    assert isinstance(entry, DidEntry) and entry.info is not None and entry.info.did == ALICE
    assert (entry.error, entry.fetched_at, entry.expires_at) == (None, FETCHED.timestamp(), FETCHED.timestamp() + 100)


def test_a_document_stored_as_json_text_is_read_too() -> None:
    text: Any = json.dumps(DID_DOCS[ALICE])  # as a jsonb column without its codec reads
    entry = entry_from_store(ALICE, CachedDid(text, None, FETCHED), hit_ttl=1.0, error_ttl=1.0)
    assert entry is not None and entry.info is not None


def test_a_stored_error_lives_the_error_ttl() -> None:
    entry = entry_from_store(ALICE, CachedDid(None, "bad_document", FETCHED), hit_ttl=100.0, error_ttl=5.0)
    assert entry is not None and entry.info is None
    assert (entry.error, entry.message, entry.expires_at) == (
        "bad_document",
        "cached bad_document",
        FETCHED.timestamp() + 5,
    )
    missing = entry_from_store(ALICE, CachedDid(None, None, FETCHED), hit_ttl=100.0, error_ttl=5.0)
    assert missing is not None and missing.error == "not_found"


def test_a_stored_document_that_no_longer_parses_is_fetched_again() -> None:
    other = {**DID_DOCS[ALICE], "id": "did:plc:someoneelse"}
    assert entry_from_store(ALICE, CachedDid(other, None, FETCHED), hit_ttl=1.0, error_ttl=1.0) is None
    damaged: Any = "{not json"
    assert entry_from_store(ALICE, CachedDid(damaged, None, FETCHED), hit_ttl=1.0, error_ttl=1.0) is None
