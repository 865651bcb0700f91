"""One network lookup of a handle: through the operator's resolveHandle service, or the way the
atproto handle spec says (DNS TXT `_atproto.<handle>` and HTTPS `/.well-known/atproto-did` at
once, DNS winning). Outcomes: ok, not_found, unreachable, conflict, forbidden_address."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Final
from urllib.parse import quote

import dns.asyncresolver
import dns.exception
import dns.resolver

from atmx.indexer.identity.did_lookup import TRANSIENT_STATUSES, Getter
from atmx.indexer.identity.http import FetchFailed
from atmx.indexer.repo.syntax import is_did, is_handle

__all__ = [
    "Answer",
    "dids_from_txt",
    "is_resolvable_handle",
    "resolve_dns",
    "resolve_https",
    "resolve_via_dns_and_https",
    "resolve_via_service",
    "well_known_url",
]

Answer = tuple[str | None, str]  # (DID or None, outcome)

MAX_WELL_KNOWN: Final = 2048
MAX_XRPC_BODY: Final = 64 << 10
# Reserved TLDs that can never carry a real handle (atproto handle spec); .test is kept for devnets.
_DISALLOWED_TLDS: Final = frozenset({"alt", "arpa", "example", "internal", "invalid", "local", "localhost", "onion"})


def is_resolvable_handle(handle: str) -> bool:
    """Handle syntax, and a TLD that may carry real handles."""
    return is_handle(handle) and handle.rsplit(".", 1)[1] not in _DISALLOWED_TLDS


def well_known_url(handle: str) -> str:
    return f"https://{handle}/.well-known/atproto-did"


async def resolve_via_service(get: Getter, service_url: str, handle: str) -> Answer:
    """Ask a resolveHandle service (operator configuration, so not a stranger's host)."""
    url = f"{service_url}/xrpc/com.atproto.identity.resolveHandle?handle={quote(handle)}"
    try:
        status, body = await get(url, MAX_XRPC_BODY, stranger=False)
    except FetchFailed:
        return None, "unreachable"
    if status >= 500 or status in TRANSIENT_STATUSES:
        return None, "unreachable"
    if status != 200:
        return None, "not_found"  # the XRPC answer for an unknown handle is 400 HandleNotFound
    try:
        did = json.loads(body).get("did")
    except (ValueError, AttributeError, RecursionError):
        return None, "unreachable"
    return (did, "ok") if is_did(did) else (None, "not_found")


async def resolve_via_dns_and_https(
    dns_lookup: Callable[[], Awaitable[Answer]], https_lookup: Callable[[], Awaitable[Answer]]
) -> Answer:
    """Both lookups run at once; DNS wins whenever it has an answer (atproto handle spec)."""
    https = asyncio.ensure_future(https_lookup())
    try:
        did, outcome = await dns_lookup()
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


async def resolve_dns(resolver: Callable[[], dns.asyncresolver.Resolver], handle: str, lifetime: float) -> Answer:
    """The `_atproto.<handle>` TXT record; `resolver` is called inside the guard, since building
    one reads the system configuration and may fail like a lookup does."""
    try:
        answer = await resolver().resolve(f"_atproto.{handle}", "TXT", lifetime=lifetime)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None, "not_found"
    except dns.exception.DNSException:
        return None, "unreachable"
    return dids_from_txt(b"".join(rdata.strings) for rdata in answer)


def dids_from_txt(records: Iterable[bytes]) -> Answer:
    """The DID the `did=` TXT records name: one, none (not_found) or several (conflict)."""
    dids = set()
    for record in records:
        value = record.decode("ascii", "replace").strip()
        if value.startswith("did=") and is_did(value[4:]):
            dids.add(value[4:])
    if len(dids) > 1:
        return None, "conflict"
    return (dids.pop(), "ok") if dids else (None, "not_found")


async def resolve_https(get: Getter, url: str) -> Answer:
    """The DID in a handle's well-known file (a stranger's host)."""
    try:
        status, body = await get(url, MAX_WELL_KNOWN, stranger=True)
    except FetchFailed as exc:
        return None, exc.reason if exc.reason in ("unreachable", "forbidden_address") else "not_found"
    if not 200 <= status < 300:
        return None, "unreachable" if status >= 500 else "not_found"
    did = body.decode("ascii", "replace").strip()
    return (did, "ok") if is_did(did) else (None, "not_found")
