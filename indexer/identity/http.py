"""HTTP plumbing for fetches of untrusted bytes: capped body reads and the SSRF guard.

A DID document, a handle's well-known file or a PDS's CAR comes from a host a stranger
controls, so nothing is read without a byte cap: a declared `Content-Length` over the cap
is refused before the first byte, and a body without one is counted as it streams in
(after decompression, so a small gzip bomb cannot get past the cap either).

The same strangers choose *which* host atmx fetches from (a did:web host, a handle, a
redirect). `guarded_session` refuses to connect to anything but public addresses (see
addresses.py), checked on the addresses the connection is actually made to: its resolver
wraps the default one and refuses an answer holding a forbidden address, and its connector
refuses forbidden IP-literal URLs (aiohttp connects to those without asking the resolver).
The check therefore covers every redirect hop and leaves no DNS-rebinding window between a
check and the connect.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from atmx.indexer.identity.addresses import forbidden_reason

if TYPE_CHECKING:
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.connector import Connection
    from aiohttp.tracing import Trace

__all__ = [
    "BodyTooLarge",
    "FetchFailed",
    "ForbiddenAddress",
    "GuardedResolver",
    "get_capped",
    "guarded_session",
    "literal_host_reason",
    "read_capped",
]

_CHUNK = 1 << 16


class BodyTooLarge(ValueError):
    """A response body over the caller's cap; `size` is the declared length when there was one."""

    def __init__(self, url: str, limit: int, size: int | None = None) -> None:
        what = f"body of {size} bytes" if size is not None else "body"
        super().__init__(f"{url}: {what} exceeds {limit} bytes")
        self.limit = limit
        self.size = size


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body of `resp`, at most `limit` bytes; raises BodyTooLarge past the cap."""
    if resp.content_length is not None and resp.content_length > limit:
        raise BodyTooLarge(str(resp.url), limit, resp.content_length)
    body = bytearray()
    async for chunk in resp.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(str(resp.url), limit)
    return bytes(body)


class ForbiddenAddress(aiohttp.ClientConnectionError):
    """A connection refused by the guard before it was made.

    A ClientError, not an OSError: aiohttp passes it through unwrapped, so callers can tell
    it apart from a host that is merely unreachable.
    """

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"{host[:100]}: refusing to connect to {reason}")
        self.host = host
        self.reason = reason


class GuardedResolver(AbstractResolver):
    """Wraps a resolver (getaddrinfo unless given) and refuses answers with a forbidden address.

    One forbidden address spoils the whole answer: a public host has no business publishing
    a private one, and connecting to the rest would reward the attempt. A given `inner`
    stays its owner's to close; the default one holds nothing that needs closing.
    """

    def __init__(self, inner: AbstractResolver | None = None, *, allow_loopback: bool = False) -> None:
        self._inner = inner
        self.allow_loopback = allow_loopback

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._inner is None:
            self._inner = ThreadedResolver()  # created here: it wants a running loop
        answers = await self._inner.resolve(host, port, family)
        for answer in answers:
            reason = forbidden_reason(answer["host"], allow_loopback=self.allow_loopback)
            if reason is not None:
                raise ForbiddenAddress(host, reason)
        return answers

    async def close(self) -> None:
        pass


def literal_host_reason(host: str, *, allow_loopback: bool = False) -> str | None:
    """For a URL host aiohttp would connect to without resolving it: why it is refused, or None.

    Mirrors aiohttp's own test for "this is an IP address" (`:` in it, or digits and dots
    only), so nothing escapes both this check and the resolver's. Legacy numeric forms such
    as `127.1` or `2130706433` are not canonical addresses and are refused outright.
    """
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not (":" in bare or bare.replace(".", "").isdigit()):
        return None  # a name: the guarded resolver checks what it resolves to
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        return f"{bare[:60]!r}, which is not a canonical IP address"
    return forbidden_reason(address, allow_loopback=allow_loopback)


class _GuardedConnector(aiohttp.TCPConnector):
    def __init__(self, guard: GuardedResolver) -> None:
        super().__init__(resolver=guard)
        self.guard = guard

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature, overridden
    ) -> Connection:
        host = req.url.raw_host or ""
        reason = literal_host_reason(host, allow_loopback=self.guard.allow_loopback)
        if reason is not None:
            raise ForbiddenAddress(host, reason)
        return await super().connect(req, traces, timeout)


def guarded_session(
    *,
    allow_loopback: bool = False,
    resolver: AbstractResolver | None = None,
    headers: Mapping[str, str] | None = None,
) -> aiohttp.ClientSession:
    """A session for hosts strangers name: it connects to public addresses only.

    `resolver` replaces the system resolver under the guard (tests answer with hostile
    addresses through it). `trust_env` stays off: through an environment proxy the guard
    would only ever see the proxy's address.
    """
    connector = _GuardedConnector(GuardedResolver(resolver, allow_loopback=allow_loopback))
    return aiohttp.ClientSession(connector=connector, headers=headers, trust_env=False)


class FetchFailed(Exception):
    """`reason`: unreachable (network, timeout), bad_document (too big, bad redirect) or forbidden_address."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


REDIRECTS = frozenset({301, 302, 303, 307, 308})


async def get_capped(
    session: aiohttp.ClientSession, url: str, limit: int, *, allow_http: bool = False, max_redirects: int = 3
) -> tuple[int, bytes]:
    """GET `url` with a body cap, following up to `max_redirects` redirects by hand.

    Each hop is a new request on `session`, so a guarded session checks every hop's address;
    a redirect to anything but https (or http with `allow_http`) is refused. Only 2xx bodies
    are read. The caller sets the deadline.
    """
    try:
        for _ in range(max_redirects + 1):
            async with session.get(url, allow_redirects=False) as resp:
                location = resp.headers.get("Location")
                if resp.status in REDIRECTS and location:
                    url = urljoin(url, location)
                    if not (url.startswith("https://") or (allow_http and url.startswith("http://"))):
                        raise FetchFailed("bad_document", "redirect to a non-https URL")
                    continue
                if not 200 <= resp.status < 300:
                    return resp.status, b""
                return resp.status, await read_capped(resp, limit)
    except BodyTooLarge as exc:
        raise FetchFailed("bad_document", str(exc)) from exc
    except ForbiddenAddress as exc:
        raise FetchFailed("forbidden_address", str(exc)) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise FetchFailed("unreachable", f"{type(exc).__name__}: {exc}") from exc
    raise FetchFailed("bad_document", "too many redirects")
