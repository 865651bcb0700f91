"""What the identity resolver remembers: DID and handle entries in a memory LRU, and the
persistent DID cache it reads through (PostgreSQL in production, `DidCacheStore`)."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from atmx.indexer.identity.diddoc import DidDocError, DidInfo, parse_did_document

__all__ = ["CachedDid", "DidCacheStore", "DidEntry", "HandleEntry", "Lru", "entry_from_store"]


@dataclass(frozen=True, slots=True)
class CachedDid:
    """A row of the persistent DID cache."""

    doc: dict[str, Any] | None  # None for a cached error
    error: str | None  # a ResolutionError reason
    fetched_at: datetime


class DidCacheStore(Protocol):
    async def load_did(self, did: str) -> CachedDid | None: ...

    async def save_did(self, did: str, doc: dict[str, Any] | None, error: str | None, fetched_at: datetime) -> None: ...


@dataclass(slots=True)
class DidEntry:
    info: DidInfo | None
    error: str | None  # reason, when info is None
    message: str
    fetched_at: float  # when the network answered (epoch seconds); -inf after invalidate()
    expires_at: float


@dataclass(slots=True)
class HandleEntry:
    did: str | None
    fetched_at: float
    expires_at: float


_V = TypeVar("_V")


class Lru(Generic[_V]):
    """A bounded map that forgets the least recently used key first."""

    def __init__(self, size: int) -> None:
        self._items: OrderedDict[str, _V] = OrderedDict()
        self._size = size

    def get(self, key: str) -> _V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: _V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        if len(self._items) > self._size:
            self._items.popitem(last=False)

    def pop(self, key: str) -> _V | None:
        return self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


def entry_from_store(did: str, cached: CachedDid, *, hit_ttl: float, error_ttl: float) -> DidEntry | None:
    """The memory entry for a stored row, expiring as if fetched when the row was; None when the
    stored document no longer parses (stored before a parser change, or damaged): fetch again."""
    fetched_at = cached.fetched_at.timestamp()
    if cached.error is not None or cached.doc is None:
        error = cached.error or "not_found"
        return DidEntry(None, error, f"cached {error}", fetched_at, fetched_at + error_ttl)
    doc: Any = cached.doc
    try:
        info = parse_did_document(did, json.loads(doc) if isinstance(doc, str) else doc)
    except (DidDocError, ValueError):
        return None
    return DidEntry(info, None, "", fetched_at, fetched_at + hit_ttl)
