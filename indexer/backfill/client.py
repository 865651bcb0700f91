"""GETs to atproto sync endpoints for the backfill: paced per host, retried with backoff, capped.

The one HTTP client of the backfill job and the gap repair; every answer is size-capped and
every failure is a FetchError with a reason (a metric label and a summary line).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from atmx.indexer import metrics
from atmx.indexer.backfill.host_limiter import HostLimiter
from atmx.indexer.config import Settings
from atmx.indexer.identity.http import BodyTooLarge, read_capped

MAX_BODY = 16 << 20
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
_TRANSIENT = frozenset({408, 425, 429, 500, 502, 503, 504})  # 501 Not Implemented is an answer


class FetchError(ValueError):
    """A repo could not be fetched with proof. `retriable`: worth trying again later."""

    def __init__(self, reason: str, message: str, *, retriable: bool = True) -> None:
        super().__init__(message)
        self.reason = reason
        self.retriable = retriable


class DiscoveryUnsupported(FetchError):
    def __init__(self, message: str) -> None:
        super().__init__("unsupported", message, retriable=False)


@dataclass(frozen=True, slots=True)
class Options:
    workers: int = 16
    host_rate: float = 3.0
    host_burst: int = 10
    host_concurrency: int = 4
    attempts: int = 5
    timeout: float = 30.0
    max_outstanding: int = 5000  # repos being worked on at once (bounds memory)
    allow_insecure_http: bool = False
    all_repos: bool = False  # list every repo (listRepos) where the collection directory is not served

    @classmethod
    def from_settings(cls, s: Settings) -> Options:
        return cls(
            workers=s.backfill_workers,
            host_rate=s.backfill_host_rate,
            host_burst=s.backfill_host_burst,
            host_concurrency=s.backfill_host_concurrency,
            allow_insecure_http=s.allow_insecure_http,
            all_repos=s.backfill_all_repos,
        )


def http_base(url: str) -> str:
    """`wss://host/xrpc/...`, `host` or `https://host/` -> `https://host` (ws -> http for loopback)."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "https://" + url
    parts = urlsplit(url)
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


class SyncClient:
    """GETs to sync endpoints: paced per host, retried with backoff, never stalling other hosts.

    A request first waits for its host's slot (at most `host_concurrency` in flight per host)
    and rate limiter, and only then takes one of the `workers` global slots, so requests
    queued behind a slow or rate-limited host never hold capacity the other hosts need.
    """

    def __init__(self, session: aiohttp.ClientSession, opts: Options) -> None:
        self.session = session
        self.opts = opts
        self.limiter = HostLimiter(opts.host_rate, opts.host_burst)
        self._global = asyncio.Semaphore(opts.workers)
        self._hosts: dict[str, asyncio.Semaphore] = {}

    def _host_slot(self, host: str) -> asyncio.Semaphore:
        slot = self._hosts.get(host)
        if slot is None:
            slot = self._hosts[host] = asyncio.Semaphore(self.opts.host_concurrency)
        return slot

    async def get(self, base: str, nsid: str, params: dict[str, str]) -> tuple[int, bytes]:
        """(status, body) of the first answer that is not a 429/5xx/network error."""
        parts = urlsplit(base)
        if parts.scheme != "https" and not (parts.scheme == "http" and self.opts.allow_insecure_http):
            raise FetchError(
                "insecure_endpoint",
                f"{base} is not https (ATMX_ALLOW_INSECURE_HTTP=1 allows http:// on loopback test networks)",
                retriable=False,
            )
        host = parts.netloc
        url = f"{base}/xrpc/{nsid}"
        last = ""
        for attempt in range(self.opts.attempts):
            status: int | None = None
            async with self._host_slot(host):
                await self.limiter.acquire(host)
                async with self._global:
                    try:
                        async with self.session.get(
                            url, params=params, timeout=aiohttp.ClientTimeout(total=self.opts.timeout)
                        ) as resp:
                            status = resp.status
                            body = await _read_body(resp)
                            pause = self.limiter.observe(host, status, resp.headers)
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        last = _network_error(exc)
                        pause = None
            if pause:
                metrics.BACKFILL_PAUSE_SECONDS.inc(pause)
            if status is None:
                metrics.BACKFILL_REQUESTS.labels(nsid, "network_error").inc()
            elif status in _TRANSIENT:
                metrics.BACKFILL_REQUESTS.labels(nsid, str(status)).inc()
                last = f"HTTP {status}"
            else:
                metrics.BACKFILL_REQUESTS.labels(nsid, str(status)).inc()
                return status, body
            if attempt + 1 < self.opts.attempts and not pause:
                # a 429 already blocks the host for as long as it asked; others back off with jitter
                cap = min(BACKOFF_MAX, BACKOFF_START * 2**attempt)
                await asyncio.sleep(random.uniform(cap / 2, cap))
        raise FetchError("unreachable", f"{url}: {last} after {self.opts.attempts} attempts")


def _network_error(exc: BaseException) -> str:
    """A short reason: "connection refused", "unknown host", "timed out", or the error itself."""
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, socket.gaierror):
            return "unknown host"
        if os_error.errno:
            return os.strerror(os_error.errno).lower()
    return f"{type(exc).__name__}: {exc}"


async def _read_body(resp: aiohttp.ClientResponse) -> bytes:
    try:
        return await read_capped(resp, MAX_BODY)
    except BodyTooLarge:
        raise FetchError("too_large", f"{resp.url}: body over {MAX_BODY} bytes", retriable=False) from None


def xrpc_error(body: bytes) -> str:
    try:
        err = json.loads(body)
    except ValueError:
        return ""
    return str(err.get("error", "")) if isinstance(err, dict) else ""
