"""DID and handle resolution over HTTP and DNS, with a memory LRU in front of a persistent cache.

Caching follows indigo's directory: successes live 24 h, not-found and bad documents 2 min.
Network failures are remembered only briefly (`unreachable_ttl`), and while PLC is unreachable
an expired but previously good document keeps being served so that an outage does not stall
indexing. Concurrent lookups of one DID or handle share a single request.

Hosts that strangers name (did:web hosts, `https://<handle>/.well-known/atproto-did`, and
wherever those redirect) are fetched through a guarded session that connects to public
addresses only (http.py); the PLC directory and the handle resolver service are operator
configuration and use the plain session.

This module decides what is cached and for how long; one network lookup is did_lookup.py's or
handle_lookup.py's, and the entries and the persistent cache's interface are cache.py's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import aiohttp
import dns.asyncresolver
from aiohttp.abc import AbstractResolver

from atmx.indexer.identity.cache import DidCacheStore, DidEntry, HandleEntry, Lru, entry_from_store
from atmx.indexer.identity.did_lookup import (
    DEFAULT_PLC,
    Fetched,
    ResolutionError,
    did_document_url,
    fetch_did_document,
)
from atmx.indexer.identity.diddoc import DidInfo
from atmx.indexer.identity.handle_lookup import (
    Answer,
    is_resolvable_handle,
    resolve_dns,
    resolve_https,
    resolve_via_dns_and_https,
    resolve_via_service,
    well_known_url,
)
from atmx.indexer.identity.http import FetchFailed, get_capped, guarded_session

__all__ = ["IdentityResolver", "ResolutionError"]

log = logging.getLogger(__name__)

_USER_AGENT = "atmx-indexer"


class IdentityResolver:
    """Resolves DIDs to `DidInfo` and handles to DIDs.

    `on_result(kind, outcome)` is called with kind "did" or "handle". Every call reports
    "hit" (answered from memory or the store, including cached errors) or "miss"; every network
    lookup reports its outcome: "ok", "not_found", "unreachable", "bad_document", "stale"
    (unreachable, previous document served), "forbidden_address" (a stranger-named host that
    is or resolves to a non-public address, or redirects to one), and for handles "conflict".
    Refused input reports "invalid_did", "unsupported_did_method" or "invalid_handle" without
    a hit/miss.

    `allow_insecure_http` (loopback test networks) allows http:// for did:web:localhost and
    redirects, and lets stranger-named hosts be loopback; private and link-local addresses
    stay refused. `address_resolver` replaces the system resolver under that guard.
    """

    def __init__(
        self,
        plc_url: str = DEFAULT_PLC,
        *,
        handle_resolver: str | None = None,
        cache: DidCacheStore | None = None,
        hit_ttl: float = 24 * 3600.0,
        error_ttl: float = 120.0,
        unreachable_ttl: float = 10.0,
        refresh_min_interval: float = 60.0,
        max_entries: int = 100_000,
        timeout: float = 10.0,
        allow_insecure_http: bool = False,
        session: aiohttp.ClientSession | None = None,
        address_resolver: AbstractResolver | None = None,
        dns_resolver: dns.asyncresolver.Resolver | None = None,
        on_result: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._plc_url = plc_url.rstrip("/")
        self._handle_resolver = handle_resolver.rstrip("/") if handle_resolver else None
        self._store = cache
        self._hit_ttl = hit_ttl
        self._error_ttl = error_ttl
        self._unreachable_ttl = unreachable_ttl
        # A forced refresh (e.g. after a bad signature) is honoured at most this often per DID, so a
        # repo that keeps sending badly signed commits cannot turn us into a PLC amplifier.
        self._refresh_min_interval = refresh_min_interval
        self._timeout = timeout
        self._insecure = allow_insecure_http
        self._session = session
        self._own_session = session is None
        self._address_resolver = address_resolver
        self._dns = dns_resolver
        self._on_result = on_result
        self._clock = clock
        self._dids: Lru[DidEntry] = Lru(max_entries)
        self._handles: Lru[HandleEntry] = Lru(max_entries)
        self._did_tasks: dict[tuple[str, bool], asyncio.Task[tuple[DidEntry, bool]]] = {}
        self._handle_tasks: dict[str, asyncio.Task[str | None]] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        tasks = [*self._did_tasks.values(), *self._handle_tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    # --- DIDs ---

    async def resolve_did(self, did: str, *, force_refresh: bool = False) -> DidInfo:
        entry = self._dids.get(did)
        if entry is not None:
            now = self._clock()
            fresh = now < entry.expires_at
            if fresh and not force_refresh:
                self._emit("did", "hit")
                return _answer(did, entry)
            if force_refresh and entry.info is not None and now - entry.fetched_at < self._refresh_min_interval:
                self._emit("did", "hit")
                return entry.info
        try:
            url = self._did_url(did)
        except ResolutionError as exc:
            self._emit("did", exc.reason)
            raise
        # A memory entry, even expired, is at least as new as the store's, so only a cold miss reads it.
        network_only = force_refresh or entry is not None
        key = (did, network_only)
        task = self._did_tasks.get(key)
        if task is None:
            task = asyncio.create_task(self._lookup_did(did, url, network_only, force_refresh))
            self._did_tasks[key] = task
            task.add_done_callback(lambda t: self._forget(self._did_tasks, key, t))
        # shield: one cancelled caller must not cancel the lookup the others are waiting for.
        result, from_network = await asyncio.shield(task)
        self._emit("did", "miss" if from_network else "hit")
        return _answer(did, result)

    def cached_did(self, did: str) -> DidInfo | None:
        """The document in memory, if it is fresh and good (a hit); None means `resolve_did` must be awaited."""
        entry = self._dids.get(did)
        if entry is not None and entry.info is not None and self._clock() < entry.expires_at:
            self._emit("did", "hit")
            return entry.info
        return None

    def invalidate(self, did: str) -> None:
        """Forget what we know about `did` (call on #identity); the next resolve goes to the network."""
        entry = self._dids.get(did)
        if entry is not None and entry.info is not None and entry.info.handle is not None:
            self._handles.pop(entry.info.handle)
        # Keep the old document for the outage fallback, but make it expired and refreshable at once.
        # Without a memory entry, a marker is still needed to stop the store serving the old document.
        info = entry.info if entry is not None else None
        if entry is not None or self._store is not None:
            self._dids.put(did, DidEntry(info, "not_found" if info is None else None, "", float("-inf"), 0.0))
        # Lookups already in flight may carry the old document: detach them so they don't write it back.
        self._did_tasks.pop((did, False), None)
        self._did_tasks.pop((did, True), None)

    async def _lookup_did(self, did: str, url: str, network_only: bool, force: bool) -> tuple[DidEntry, bool]:
        previous = self._dids.get(did)
        if not network_only and self._store is not None:
            stored = await self._load(did)
            if stored is not None:
                if self._clock() < stored.expires_at:
                    self._remember(did, stored)
                    return stored, False
                previous = stored
        fetched = await self._fetch(did, url)
        now = self._clock()
        if fetched.reason == "unreachable":
            if previous is not None and previous.info is not None:
                if force:  # the caller wants news; the old entry stays cached for everyone else
                    self._emit("did", "unreachable")
                    return DidEntry(None, "unreachable", fetched.message, now, now), True
                self._emit("did", "stale")
                stale = DidEntry(previous.info, None, "", previous.fetched_at, now + self._unreachable_ttl)
                self._remember(did, stale)
                return stale, True
            self._emit("did", "unreachable")
            entry = DidEntry(None, "unreachable", fetched.message, now, now + self._unreachable_ttl)
            self._remember(did, entry)
            return entry, True
        self._emit("did", fetched.reason)
        if fetched.info is not None:
            entry = DidEntry(fetched.info, None, "", now, now + self._hit_ttl)
        else:
            entry = DidEntry(None, fetched.reason, fetched.message, now, now + self._error_ttl)
        self._remember(did, entry)
        await self._save(did, fetched.doc, entry.error, now)
        return entry, True

    def _remember(self, did: str, entry: DidEntry) -> None:
        task = asyncio.current_task()
        if self._did_tasks.get((did, False)) is task or self._did_tasks.get((did, True)) is task:
            self._dids.put(did, entry)

    async def _fetch(self, did: str, url: str) -> Fetched:
        return await fetch_did_document(self._get, did, url)

    def _did_url(self, did: str) -> str:
        return did_document_url(did, self._plc_url, allow_insecure_http=self._insecure)

    async def _load(self, did: str) -> DidEntry | None:
        assert self._store is not None
        try:
            cached = await self._store.load_did(did)
        except Exception:  # a cache outage must not stop resolution
            log.warning("DID cache load failed for %s", did, exc_info=True)
            return None
        if cached is None:
            return None
        return entry_from_store(did, cached, hit_ttl=self._hit_ttl, error_ttl=self._error_ttl)

    async def _save(self, did: str, doc: dict[str, Any] | None, error: str | None, now: float) -> None:
        if self._store is None:
            return
        try:
            await self._store.save_did(did, doc, error, datetime.fromtimestamp(now, UTC))
        except Exception:
            log.warning("DID cache save failed for %s", did, exc_info=True)

    # --- handles ---

    async def resolve_handle(self, handle: str, *, force_refresh: bool = False) -> str | None:
        """The DID a handle points to, or None (unknown, conflicting, unreachable, or invalid)."""
        handle = handle.lower()
        if not is_resolvable_handle(handle):
            self._emit("handle", "invalid_handle")
            return None
        entry = self._handles.get(handle)
        if entry is not None:
            now = self._clock()
            if now < entry.expires_at and (not force_refresh or now - entry.fetched_at < self._refresh_min_interval):
                self._emit("handle", "hit")
                return entry.did
        self._emit("handle", "miss")
        task = self._handle_tasks.get(handle)
        if task is None:
            task = asyncio.create_task(self._lookup_handle(handle))
            self._handle_tasks[handle] = task
            task.add_done_callback(lambda t: self._forget(self._handle_tasks, handle, t))
        return await asyncio.shield(task)

    async def verify_handle(self, did_info: DidInfo, *, force_refresh: bool = False) -> tuple[str | None, bool]:
        """The handle the document claims, and whether that handle resolves back to the same DID.

        `force_refresh` asks the network rather than the cache (rate-limited per handle)."""
        handle = did_info.handle
        if handle is None:
            return None, False
        resolved = await self.resolve_handle(handle, force_refresh=force_refresh)
        if resolved != did_info.did and not force_refresh:
            # The cached answer may predate a handle move to this DID; ask again (rate-limited).
            resolved = await self.resolve_handle(handle, force_refresh=True)
        return handle, resolved == did_info.did

    async def _lookup_handle(self, handle: str) -> str | None:
        if self._handle_resolver is not None:
            did, outcome = await self._resolve_via_service(handle)
        else:
            did, outcome = await self._resolve_via_dns_and_https(handle)
        self._emit("handle", outcome)
        now = self._clock()
        ttl = self._hit_ttl if did is not None else self._error_ttl
        self._handles.put(handle, HandleEntry(did, now, now + ttl))
        return did

    async def _resolve_via_service(self, handle: str) -> Answer:
        assert self._handle_resolver is not None
        return await resolve_via_service(self._get, self._handle_resolver, handle)

    async def _resolve_via_dns_and_https(self, handle: str) -> Answer:
        return await resolve_via_dns_and_https(lambda: self._resolve_dns(handle), lambda: self._resolve_https(handle))

    # The three hooks below are separate methods so that tests can point a lookup at loopback.

    async def _resolve_dns(self, handle: str) -> Answer:
        return await resolve_dns(self._dns_resolver, handle, self._timeout)

    async def _resolve_https(self, handle: str) -> Answer:
        return await resolve_https(self._get, self._well_known_url(handle))

    def _well_known_url(self, handle: str) -> str:
        return well_known_url(handle)

    def _dns_resolver(self) -> dns.asyncresolver.Resolver:
        if self._dns is None:
            self._dns = dns.asyncresolver.Resolver()
        return self._dns

    # --- plumbing ---

    async def _get(self, url: str, limit: int, *, stranger: bool) -> tuple[int, bytes]:
        """GET with a size cap and a deadline; `stranger`: the host came from someone else's data."""
        try:
            async with asyncio.timeout(self._timeout):
                if stranger:
                    # A session per fetch: every stranger names a different host, so there is no
                    # pool worth keeping, and nothing is left open for the owner to close.
                    headers = {"User-Agent": _USER_AGENT}
                    async with guarded_session(
                        allow_loopback=self._insecure, resolver=self._address_resolver, headers=headers
                    ) as guarded:
                        return await get_capped(guarded, url, limit, allow_http=self._insecure)
                if self._session is None:
                    self._session = aiohttp.ClientSession(headers={"User-Agent": _USER_AGENT})
                return await get_capped(self._session, url, limit, allow_http=self._insecure)
        except TimeoutError as exc:
            raise FetchFailed("unreachable", f"TimeoutError: {exc}") from exc

    def _emit(self, kind: str, outcome: str) -> None:
        if self._on_result is not None:
            self._on_result(kind, outcome)

    @staticmethod
    def _forget(tasks: dict[Any, asyncio.Task[Any]], key: Any, task: asyncio.Task[Any]) -> None:
        if tasks.get(key) is task:
            del tasks[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("identity lookup failed", exc_info=task.exception())


def _answer(did: str, entry: DidEntry) -> DidInfo:
    if entry.info is not None:
        return entry.info
    raise ResolutionError(entry.error or "not_found", entry.message or f"{did}: {entry.error}")
