"""DID and handle resolution over HTTP and DNS, with a memory LRU in front of a persistent cache.

Caching follows indigo's directory: successes live 24 h, not-found and bad documents 2 min.
Network failures are remembered only briefly (`unreachable_ttl`), and while PLC is unreachable
an expired but previously good document keeps being served so that an outage does not stall
indexing. Concurrent lookups of one DID or handle share a single request.

Hosts that strangers name (did:web hosts, `https://<handle>/.well-known/atproto-did`, and
wherever those redirect) are fetched through a guarded session that connects to public
addresses only (http.py); the PLC directory and the handle resolver service are operator
configuration and use the plain session.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar
from urllib.parse import quote

import aiohttp
import dns.asyncresolver
import dns.exception
import dns.resolver
from aiohttp.abc import AbstractResolver

from atmx.indexer.identity.diddoc import DidDocError, DidInfo, parse_did_document
from atmx.indexer.identity.http import FetchFailed, get_capped, guarded_session
from atmx.indexer.repo.syntax import is_did, is_handle

__all__ = ["CachedDid", "DidCacheStore", "IdentityResolver", "ResolutionError"]

log = logging.getLogger(__name__)

DEFAULT_PLC = "https://plc.directory"
_USER_AGENT = "atmx-indexer"
_MAX_DID_DOC = 1 << 20
_MAX_WELL_KNOWN = 2048
_MAX_XRPC_BODY = 64 << 10
_TRANSIENT = frozenset({408, 425, 429})

_PLC_RE = re.compile(r"did:plc:[a-z2-7]{24}")
# Reserved TLDs that can never carry a real handle (atproto handle spec); .test is kept for devnets.
_DISALLOWED_TLDS = frozenset({"alt", "arpa", "example", "internal", "invalid", "local", "localhost", "onion"})


class ResolutionError(ValueError):
    """`reason`: not_found, unreachable, bad_document, forbidden_address, unsupported_did_method, invalid_did."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CachedDid:
    doc: dict[str, Any] | None  # None for a cached error
    error: str | None  # a ResolutionError reason
    fetched_at: datetime


class DidCacheStore(Protocol):
    async def load_did(self, did: str) -> CachedDid | None: ...

    async def save_did(self, did: str, doc: dict[str, Any] | None, error: str | None, fetched_at: datetime) -> None: ...


@dataclass(slots=True)
class _DidEntry:
    info: DidInfo | None
    error: str | None  # reason, when info is None
    message: str
    fetched_at: float  # when the network answered (epoch seconds); -inf after invalidate()
    expires_at: float


@dataclass(slots=True)
class _HandleEntry:
    did: str | None
    fetched_at: float
    expires_at: float


class _Fetched:
    """Outcome of one network lookup; never raises past _fetch."""

    __slots__ = ("doc", "info", "message", "reason")

    def __init__(
        self, reason: str, message: str = "", info: DidInfo | None = None, doc: dict[str, Any] | None = None
    ) -> None:
        self.reason = reason  # "ok" or a ResolutionError reason
        self.message = message
        self.info = info
        self.doc = doc


_V = TypeVar("_V")


class _Lru(Generic[_V]):
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
        self._dids: _Lru[_DidEntry] = _Lru(max_entries)
        self._handles: _Lru[_HandleEntry] = _Lru(max_entries)
        self._did_tasks: dict[tuple[str, bool], asyncio.Task[tuple[_DidEntry, bool]]] = {}
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
            self._dids.put(did, _DidEntry(info, "not_found" if info is None else None, "", float("-inf"), 0.0))
        # Lookups already in flight may carry the old document: detach them so they don't write it back.
        self._did_tasks.pop((did, False), None)
        self._did_tasks.pop((did, True), None)

    async def _lookup_did(self, did: str, url: str, network_only: bool, force: bool) -> tuple[_DidEntry, bool]:
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
                    return _DidEntry(None, "unreachable", fetched.message, now, now), True
                self._emit("did", "stale")
                stale = _DidEntry(previous.info, None, "", previous.fetched_at, now + self._unreachable_ttl)
                self._remember(did, stale)
                return stale, True
            self._emit("did", "unreachable")
            entry = _DidEntry(None, "unreachable", fetched.message, now, now + self._unreachable_ttl)
            self._remember(did, entry)
            return entry, True
        self._emit("did", fetched.reason)
        if fetched.info is not None:
            entry = _DidEntry(fetched.info, None, "", now, now + self._hit_ttl)
        else:
            entry = _DidEntry(None, fetched.reason, fetched.message, now, now + self._error_ttl)
        self._remember(did, entry)
        await self._save(did, fetched.doc, entry.error, now)
        return entry, True

    def _remember(self, did: str, entry: _DidEntry) -> None:
        task = asyncio.current_task()
        if self._did_tasks.get((did, False)) is task or self._did_tasks.get((did, True)) is task:
            self._dids.put(did, entry)

    async def _fetch(self, did: str, url: str) -> _Fetched:
        try:
            # did:web names its own host; did:plc goes to the operator's PLC directory
            status, body = await self._get(url, _MAX_DID_DOC, stranger=did.startswith("did:web:"))
        except FetchFailed as exc:
            return _Fetched(exc.reason, f"{url}: {exc}")
        if status in (404, 410):
            return _Fetched("not_found", f"{url}: HTTP {status}")
        if status >= 500 or status in _TRANSIENT:
            return _Fetched("unreachable", f"{url}: HTTP {status}")
        if status >= 400:
            return _Fetched("not_found", f"{url}: HTTP {status}")
        if status != 200:
            return _Fetched("bad_document", f"{url}: HTTP {status}")
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            return _Fetched("bad_document", f"{url}: not JSON")
        if not isinstance(doc, dict):
            return _Fetched("bad_document", f"{url}: not a JSON object")
        try:
            info = parse_did_document(did, doc)
        except DidDocError as exc:
            return _Fetched("bad_document", f"{url}: {exc.reason}: {exc}")
        return _Fetched("ok", info=info, doc=doc)

    def _did_url(self, did: str) -> str:
        if did.startswith("did:plc:"):
            if not _PLC_RE.fullmatch(did):
                raise ResolutionError("invalid_did", f"malformed did:plc {did[:100]!r}")
            return f"{self._plc_url}/{did}"
        if did.startswith("did:web:"):
            return self._did_web_url(did)
        if not is_did(did):
            raise ResolutionError("invalid_did", f"malformed DID {did[:100]!r}")
        raise ResolutionError("unsupported_did_method", f"unsupported DID method in {did[:100]!r}")

    def _did_web_url(self, did: str) -> str:
        rest = did[len("did:web:") :]
        if ":" in rest:
            raise ResolutionError("unsupported_did_method", "did:web with a path is not allowed in atproto")
        host, _, port = rest.replace("%3a", "%3A").partition("%3A")
        host = host.lower()
        localhost = host == "localhost"
        if not (localhost or is_handle(host)):
            raise ResolutionError("invalid_did", f"did:web host {host[:100]!r} is not a hostname")
        if port and not (localhost and port.isdigit() and port.isascii() and 0 < int(port) < 65536):
            raise ResolutionError("invalid_did", "did:web ports are only allowed for localhost")
        scheme = "http" if localhost and self._insecure else "https"
        return f"{scheme}://{host}{':' + port if port else ''}/.well-known/did.json"

    async def _load(self, did: str) -> _DidEntry | None:
        assert self._store is not None
        try:
            cached = await self._store.load_did(did)
        except Exception:  # a cache outage must not stop resolution
            log.warning("DID cache load failed for %s", did, exc_info=True)
            return None
        if cached is None:
            return None
        fetched_at = cached.fetched_at.timestamp()
        if cached.error is not None or cached.doc is None:
            error = cached.error or "not_found"
            return _DidEntry(None, error, f"cached {error}", fetched_at, fetched_at + self._error_ttl)
        doc: Any = cached.doc
        try:
            info = parse_did_document(did, json.loads(doc) if isinstance(doc, str) else doc)
        except (DidDocError, ValueError):
            return None  # stored before a parser change, or damaged: fetch again
        return _DidEntry(info, None, "", fetched_at, fetched_at + self._hit_ttl)

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
        if not is_handle(handle) or handle.rsplit(".", 1)[1] in _DISALLOWED_TLDS:
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
        self._handles.put(handle, _HandleEntry(did, now, now + ttl))
        return did

    async def _resolve_via_service(self, handle: str) -> tuple[str | None, str]:
        url = f"{self._handle_resolver}/xrpc/com.atproto.identity.resolveHandle?handle={quote(handle)}"
        try:
            status, body = await self._get(url, _MAX_XRPC_BODY, stranger=False)
        except FetchFailed:
            return None, "unreachable"
        if status >= 500 or status in _TRANSIENT:
            return None, "unreachable"
        if status != 200:
            return None, "not_found"  # the XRPC answer for an unknown handle is 400 HandleNotFound
        try:
            did = json.loads(body).get("did")
        except (ValueError, AttributeError, RecursionError):
            return None, "unreachable"
        return (did, "ok") if is_did(did) else (None, "not_found")

    async def _resolve_via_dns_and_https(self, handle: str) -> tuple[str | None, str]:
        # Both run at once; DNS wins whenever it has an answer (atproto handle spec).
        https = asyncio.create_task(self._resolve_https(handle))
        try:
            did, outcome = await self._resolve_dns(handle)
            if outcome in ("ok", "conflict"):
                return did, outcome
            https_did, https_outcome = await https
        finally:
            https.cancel()
        if https_did is not None:
            return https_did, "ok"
        if https_outcome == "forbidden_address":
            return None, https_outcome
        both_failed = outcome == "unreachable" and https_outcome == "unreachable"
        return None, "unreachable" if both_failed else "not_found"

    async def _resolve_dns(self, handle: str) -> tuple[str | None, str]:
        try:
            if self._dns is None:
                self._dns = dns.asyncresolver.Resolver()
            answer = await self._dns.resolve(f"_atproto.{handle}", "TXT", lifetime=self._timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None, "not_found"
        except dns.exception.DNSException:
            return None, "unreachable"
        dids = set()
        for rdata in answer:
            value = b"".join(rdata.strings).decode("ascii", "replace").strip()
            if value.startswith("did=") and is_did(value[4:]):
                dids.add(value[4:])
        if len(dids) > 1:
            return None, "conflict"
        return (dids.pop(), "ok") if dids else (None, "not_found")

    async def _resolve_https(self, handle: str) -> tuple[str | None, str]:
        url = self._well_known_url(handle)
        try:
            status, body = await self._get(url, _MAX_WELL_KNOWN, stranger=True)
        except FetchFailed as exc:
            return None, exc.reason if exc.reason in ("unreachable", "forbidden_address") else "not_found"
        if not 200 <= status < 300:
            return None, "unreachable" if status >= 500 else "not_found"
        did = body.decode("ascii", "replace").strip()
        return (did, "ok") if is_did(did) else (None, "not_found")

    def _well_known_url(self, handle: str) -> str:
        return f"https://{handle}/.well-known/atproto-did"

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


def _answer(did: str, entry: _DidEntry) -> DidInfo:
    if entry.info is not None:
        return entry.info
    raise ResolutionError(entry.error or "not_found", entry.message or f"{did}: {entry.error}")
