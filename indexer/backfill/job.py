"""The backfill job: discover candidate repos, fetch each one's records with proof, index them.

Discovery pages the relay's collection directory (`listReposByCollection`, falling back to
`listRepos`), the `listRepos` of given PDS hosts, or takes DIDs as given; each page and its
cursor are saved together, so a killed job resumes at the page. Every candidate is then
fetched with proof (fetch.py), verified exactly as the firehose path verifies, and applied
through the same rev-guarded write path, so a backfill result never overwrites a newer
firehose result. The gap-repair worker (repair.py) uses the same `process`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg

from atmx.indexer import metrics
from atmx.indexer.backfill.client import DiscoveryUnsupported, FetchError, Options, SyncClient, http_base, xrpc_error
from atmx.indexer.backfill.fetch import RepoFetcher
from atmx.indexer.config import DEFAULT_DISCOVERY_HOST, Settings
from atmx.indexer.fatal import Fatal
from atmx.indexer.identity.http import guarded_session
from atmx.indexer.identity.resolver import IdentityResolver
from atmx.indexer.index.writes import WriteSet
from atmx.indexer.progress import Progress
from atmx.indexer.records.registry import COLLECTIONS
from atmx.indexer.repo.syntax import is_did
from atmx.indexer.store.backfill_store import STALE_PROOF, BackfillStore, ResyncItem
from atmx.indexer.store.index_store import Store

log = logging.getLogger(__name__)

LIST_BY_COLLECTION_LIMIT = 2000
LIST_REPOS_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class Source:
    """A discovery source. kind: `collection` (listReposByCollection) or `repos` (listRepos)."""

    kind: str
    base: str  # https://host
    collection: str | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.base}" + (f":{self.collection}" if self.collection else "")


# For the estimate shown before listing every repo of the network (listRepos): the Bluesky
# network held about 40 million repos in 2025.
NETWORK_REPOS_ESTIMATE = 40_000_000


@dataclass
class Summary:
    """What one run did: outcomes of the repos it fetched, failed (retried by the next run) and
    skipped (not fetchable: gone, deactivated, unresolvable) by reason."""

    outcomes: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    discovered: int = 0

    def count(self, outcome: str, state: str = "done") -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        by_reason = self.failed if state == "failed" else self.skipped if state == "skipped" else None
        if by_reason is not None:
            by_reason[outcome] = by_reason.get(outcome, 0) + 1


class WholeNetworkRefused(Fatal):
    """The discovery host has no collection directory and listing every repo was not asked for."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=2)


def whole_network_estimate(base: str, host_rate: float) -> str:
    pages = -(-NETWORK_REPOS_ESTIMATE // LIST_REPOS_LIMIT)
    hours = pages / host_rate / 3600
    return (
        f"listing every repo on {base} with listRepos means about {pages:,} requests ({hours:.1f} h at "
        f"{host_rate:g}/s) for about {NETWORK_REPOS_ESTIMATE:,} repos, then up to {len(COLLECTIONS)} getRecord "
        "requests per repo on their PDS hosts"
    )


def default_sources(discovery_host: str) -> list[Source]:
    base = http_base(discovery_host)
    return [Source("collection", base, c) for c in COLLECTIONS]


def pds_sources(urls: Sequence[str]) -> list[Source]:
    return [Source("repos", http_base(u)) for u in urls]


class Backfiller:
    """Discovery, proof fetching and gap repair over one store, resolver and HTTP session."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        resolver: IdentityResolver,
        session: aiohttp.ClientSession,
        opts: Options,
        *,
        progress: Progress | None = None,
        on_tracked: Callable[[str], None] | None = None,
        on_recorded: Callable[[WriteSet], None] | None = None,
        pds_session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.store = BackfillStore(pool)
        self.resolver = resolver
        # discovery asks the hosts the operator configured; proofs come from the PDS a stranger's
        # DID document names, so those requests may reach public addresses only
        self.client = SyncClient(session, opts)
        self._own_pds_session = pds_session is None
        self.pds_session = pds_session or guarded_session(allow_loopback=opts.allow_insecure_http)
        self.pds_client = SyncClient(self.pds_session, opts)
        self.fetcher = RepoFetcher(resolver, self.pds_client, known_rkeys=self.store.known_rkeys, workers=opts.workers)
        self.opts = opts
        self.progress = progress or Progress(None)
        self.on_tracked = on_tracked
        # called with each fetched write set once it is stored (the live pipeline follows its repo state)
        self.on_recorded = on_recorded

    # --- discovery ---

    async def discover(self, source: Source, summary: Summary | None = None) -> int:
        """Page a source into backfill_repos from where it stopped; returns the new repos."""
        state = await self.store.source(source.key)
        if state is not None and state.complete:
            return 0
        cursor = state.cursor if state is not None else None
        nsid = "com.atproto.sync.listReposByCollection" if source.kind == "collection" else "com.atproto.sync.listRepos"
        new_total = 0
        while True:
            params = {"limit": str(LIST_BY_COLLECTION_LIMIT if source.kind == "collection" else LIST_REPOS_LIMIT)}
            if source.collection:
                params["collection"] = source.collection
            if cursor:
                params["cursor"] = cursor
            status, body = await self.client.get(source.base, nsid, params)
            if status != 200:
                if source.kind == "collection" and status in (400, 401, 403, 404, 405, 501):
                    raise DiscoveryUnsupported(f"{source.base} answers {nsid} with HTTP {status} {xrpc_error(body)}")
                raise FetchError("discovery_failed", f"{source.base} {nsid}: HTTP {status} {xrpc_error(body)}")
            dids, next_cursor = _parse_page(body)
            # a repeated cursor would loop forever: treat it as the end
            complete = not next_cursor or not dids or next_cursor == cursor
            new = await self.store.save_page(source.key, dids, None if complete else next_cursor, complete)
            new_total += new
            metrics.BACKFILL_DISCOVERED.labels(source.kind).inc(new)
            self.progress.add_total(new)
            self._publish()
            if summary is not None:
                summary.discovered += new
            if complete:
                return new_total
            cursor = next_cursor

    async def discover_all(self, sources: Sequence[Source], summary: Summary | None = None) -> None:
        """Discover from every source; a relay without the collection directory falls back to listRepos."""
        fallbacks: list[Source] = []
        for source in sources:
            try:
                await self.discover(source, summary)
            except DiscoveryUnsupported as exc:
                estimate = whole_network_estimate(source.base, self.opts.host_rate)
                if not self.opts.all_repos:
                    raise WholeNetworkRefused(
                        f"{exc}: {estimate}. Set ATMX_DISCOVERY_HOST (--discovery-host) to a relay that "
                        f"serves it (default {DEFAULT_DISCOVERY_HOST}), or pass --all-repos "
                        "(ATMX_BACKFILL_ALL_REPOS=1) to list them all"
                    ) from None
                fallback = Source("repos", source.base)
                if fallback not in fallbacks:
                    log.warning("%s; %s, as --all-repos asks", exc, estimate)
                    fallbacks.append(fallback)
        for source in fallbacks:
            await self.discover(source, summary)

    async def close(self) -> None:
        if self._own_pds_session:
            await self.pds_session.close()

    # --- one repo ---

    async def fetch_repo(self, did: str, *, refresh_identity: bool = False) -> WriteSet:
        return await self.fetcher.fetch_repo(did, refresh_identity=refresh_identity)

    async def process(
        self, did: str, job: str, resync: ResyncItem | None = None, summary: Summary | None = None
    ) -> str:
        """Fetch, verify and store one repo, recording its state (and in `summary`); returns the outcome.

        Never raises for one repo's sake: an unexpected error is the outcome `internal_error`,
        recorded like a failed fetch, so a repair that keeps failing backs off exponentially.
        """
        ws: WriteSet | None = None
        try:
            ws = await self.fetch_repo(
                did, refresh_identity=resync is not None and resync.reason == "identity_unavailable"
            )
            state, error, outcome = "done", None, "ok"
        except FetchError as exc:
            state = "failed" if exc.retriable else "skipped"
            error, outcome = f"{exc.reason}: {exc}"[:500], exc.reason
            log.warning("%s of %s %s: %s", job, did, state, error)
        except Exception as exc:  # a bug must not stop the job, nor retry this repo every second
            state, outcome = "failed", "internal_error"
            error = f"internal_error: {type(exc).__name__}: {exc}"[:500]
            log.exception("%s of %s failed unexpectedly", job, did)
        if await self.store.record(ws, did, state, error, resync):
            metrics.RESYNCS_QUEUED.labels(STALE_PROOF).inc()
        if ws is not None and ws.upserts and self.on_tracked is not None:
            self.on_tracked(did)
        if ws is not None and self.on_recorded is not None:
            self.on_recorded(ws)
        metrics.BACKFILL_REPOS.labels(job, outcome).inc()
        if summary is not None:
            summary.count(outcome, state)
        return outcome

    # --- the backfill job ---

    async def run(self, sources: Sequence[Source], *, dids: Sequence[str] = (), restart: bool = False) -> Summary:
        """Discover and fetch until every candidate is finished; resumes a killed run."""
        only = list(dict.fromkeys(dids)) if dids and not sources else None
        summary = Summary()
        if restart:
            await self.store.reset(only)
        if dids:
            bad = [d for d in dids if not is_did(d)]
            if bad:
                raise ValueError(f"not a DID: {bad[0]!r}")
            await self.store.add(list(dids), "manual")
        counts = await self.store.counts(only)
        finished = counts.get("done", 0) + counts.get("skipped", 0)
        self.progress.start(finished, sum(counts.values()))
        self._publish()
        discovery = asyncio.create_task(self.discover_all(sources, summary)) if sources else None
        try:
            await self._fetch_todo(discovery, only, summary)
            if discovery is not None:
                await discovery
        finally:
            if discovery is not None and not discovery.done():
                discovery.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await discovery
            self.progress.finish()
            self._publish()
        return summary

    async def _fetch_todo(self, discovery: asyncio.Task[None] | None, only: list[str] | None, summary: Summary) -> None:
        outstanding = asyncio.Semaphore(self.opts.max_outstanding)
        tasks: set[asyncio.Task[None]] = set()
        last_id = 0

        async def one(did: str) -> None:
            try:
                outcome = await self.process(did, "backfill", summary=summary)
                self.progress.advance(ok=outcome == "ok")
                self._publish()
            finally:
                outstanding.release()

        try:
            while True:
                discovering = discovery is not None and not discovery.done()
                rows = await self.store.todo(last_id, 500, only)
                if not rows:
                    if not discovering:
                        break
                    await asyncio.sleep(0.2)
                    continue
                for row_id, did in rows:
                    last_id = row_id
                    await outstanding.acquire()
                    task = asyncio.create_task(one(did))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _publish(self) -> None:
        p = self.progress
        metrics.BACKFILL_DONE.set(p.done)
        metrics.BACKFILL_TOTAL.set(p.total)
        metrics.BACKFILL_ERRORS.set(p.errors)
        metrics.BACKFILL_RATE.set(p.rate())
        eta = p.eta()
        metrics.BACKFILL_ETA.set(-1 if eta is None else eta)


def _parse_page(body: bytes) -> tuple[list[str], str | None]:
    try:
        data: Any = json.loads(body)
    except ValueError:
        raise FetchError("bad_response", "repo list is not JSON") from None
    repos = data.get("repos") if isinstance(data, dict) else None
    if not isinstance(repos, list):
        raise FetchError("bad_response", "repo list has no repos array")
    dids = []
    for r in repos:
        if not isinstance(r, dict) or not isinstance(r.get("did"), str) or not is_did(r["did"]):
            continue
        if r.get("active") is False:
            continue  # deactivated/taken down: getRecord would refuse; the firehose reports reactivation
        dids.append(r["did"])
    cursor = data.get("cursor")
    return dids, cursor if isinstance(cursor, str) and cursor else None


def read_dids_file(text: str) -> list[str]:
    """One DID per line; blank lines and `#` comments ignored."""
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


@contextlib.asynccontextmanager
async def backfiller(
    settings: Settings,
    pool: asyncpg.Pool,
    session: aiohttp.ClientSession,
    *,
    resolver: IdentityResolver | None = None,
    progress: Progress | None = None,
    on_tracked: Callable[[str], None] | None = None,
    opts: Options | None = None,
) -> AsyncIterator[Backfiller]:
    """A Backfiller wired from settings (its own identity resolver unless one is given)."""
    own = resolver is None
    if resolver is None:
        resolver = IdentityResolver(
            plc_url=settings.plc_url,
            handle_resolver=settings.handle_resolver,
            cache=Store(pool),
            allow_insecure_http=settings.allow_insecure_http,
            session=session,
            on_result=metrics.observe_identity,
        )
    bf = Backfiller(
        pool,
        resolver,
        session,
        opts or Options.from_settings(settings),
        progress=progress,
        on_tracked=on_tracked,
    )
    try:
        yield bf
    finally:
        await bf.close()
        if own:
            await resolver.close()
