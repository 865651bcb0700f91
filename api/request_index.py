"""`directory.atmx.requestIndex`: index one account now, with proof, because an app asked.

An app whose user just published or changed a record asks atmx to look. The caller only says
*where* to look (a DID or a handle): what gets indexed is what the account's PDS proves, fetched
and verified exactly as the backfill does (backfill/fetch.py), and written through the same
rev-guarded path, so a request can never make atmx serve something the repo does not hold.
It works in `atmx serve` alone (no indexer running), writing to the primary database.

Each client may ask `client_limit` times per window, and each account is fetched at most once
per `did_interval` (a request in between gets the current answer without a new fetch), so the
method cannot be turned into a way to hammer PDSes.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final

import asyncpg
from aiohttp import web

from atmx.api.bodies import Body, identity_view
from atmx.api.errors import XrpcError, invalid_request
from atmx.api.ratelimit import FixedWindowLimiter, IpNetwork, RatePolicy, client_ip, client_key
from atmx.indexer import metrics
from atmx.indexer.backfill.client import FetchError
from atmx.indexer.backfill.fetch import RepoFetcher
from atmx.indexer.identity.resolver import IdentityResolver
from atmx.indexer.repo.syntax import is_did, is_handle
from atmx.indexer.store import queries
from atmx.indexer.store.backfill_store import BackfillStore

__all__ = ["NSID", "RequestIndexer"]

NSID: Final = "directory.atmx.requestIndex"
MAX_INPUT: Final = 4096
DEFAULT_CLIENT_LIMIT: Final = RatePolicy(30, 300.0)
DEFAULT_DID_INTERVAL: Final = 30.0
MAX_TRACKED: Final = 100_000
FETCH_TIMEOUT: Final = 60.0


class RequestIndexer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        resolver: IdentityResolver,
        fetcher: RepoFetcher,
        *,
        client_limit: RatePolicy = DEFAULT_CLIENT_LIMIT,
        did_interval: float = DEFAULT_DID_INTERVAL,
        trusted_proxies: tuple[IpNetwork, ...] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool  # the primary: this method writes
        self.resolver = resolver
        self.fetcher = fetcher
        self.clients = FixedWindowLimiter(client_limit)
        self.did_interval = did_interval
        self.trusted_proxies = trusted_proxies
        self.clock = clock
        self._fetched: OrderedDict[str, float] = OrderedDict()  # did -> when it was last fetched
        self._inflight: dict[str, asyncio.Task[str | None]] = {}

    async def close(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        await self.fetcher.client.session.close()
        await self.resolver.close()

    async def __call__(self, request: web.Request, body: Any) -> Body:
        actor = body.get("actor") if isinstance(body, dict) else None
        if not isinstance(actor, str) or not (is_did(actor) or is_handle(actor)):
            raise invalid_request('input must be {"actor": <DID or handle>}')
        key = client_key(client_ip(request.remote, request.headers.getall("X-Forwarded-For", []), self.trusted_proxies))
        decision = self.clients.hit(key)
        if not decision.allowed:
            metrics.REQUEST_INDEX.labels("rate_limited").inc()
            raise XrpcError(429, "RateLimitExceeded", f"Too many index requests, retry in {decision.retry_after}s")
        did = actor if is_did(actor) else await self.resolver.resolve_handle(actor, force_refresh=True)
        if did is None:
            metrics.REQUEST_INDEX.labels("handle_not_found").inc()
            return {"actor": actor, "indexed": False, "reason": "handle_not_found"}
        reason = await self._fetch(did)
        metrics.REQUEST_INDEX.labels(reason or "ok").inc()
        out: Body = {"actor": actor, "did": did, "indexed": reason is None}
        if reason is not None:
            out["reason"] = reason
        found = await queries.get_identities(self.pool, [did], [])
        if found:
            out["identity"] = identity_view(found[0])
        return out

    async def _fetch(self, did: str) -> str | None:
        """Fetch and apply the account's records, at most once per did_interval; the reason it failed."""
        last = self._fetched.get(did)
        if last is not None and self.clock() - last < self.did_interval:
            return None  # fetched moments ago: the index already holds the answer
        task = self._inflight.get(did)
        if task is None:  # concurrent requests for one account share one fetch
            task = self._inflight[did] = asyncio.create_task(self._fetch_now(did))
            task.add_done_callback(lambda _t: self._inflight.pop(did, None))
        return await asyncio.shield(task)

    async def _fetch_now(self, did: str) -> str | None:
        self._fetched[did] = self.clock()
        self._fetched.move_to_end(did)
        while len(self._fetched) > MAX_TRACKED:
            self._fetched.popitem(last=False)
        try:
            async with asyncio.timeout(FETCH_TIMEOUT):
                ws = await self.fetcher.fetch_repo(did, refresh_identity=True)
        except FetchError as exc:
            return exc.reason
        except TimeoutError:
            return "timeout"
        await BackfillStore(self.pool).record(ws, did, "done", None)
        return None
