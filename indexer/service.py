"""Wires the parts into running services: database, indexer (stream + pipeline), API."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
from aiohttp import web

from atmx.api.app import create_app, run_api
from atmx.api.auth import ServiceAuth
from atmx.api.ratelimit import FixedWindowLimiter, IpNetwork, RatePolicy, parse_networks
from atmx.api.request_index import RequestIndexer
from atmx.indexer import metrics
from atmx.indexer.backfill.client import Options, SyncClient
from atmx.indexer.backfill.fetch import RepoFetcher
from atmx.indexer.backfill.job import Backfiller, default_sources
from atmx.indexer.backfill.repair import GapRepair
from atmx.indexer.config import Settings
from atmx.indexer.fatal import Fatal
from atmx.indexer.firehose.stream import FirehoseStream
from atmx.indexer.identity.handle_check import HandleChecker
from atmx.indexer.identity.http import guarded_session
from atmx.indexer.identity.resolver import IdentityResolver
from atmx.indexer.index.pipeline import Pipeline
from atmx.indexer.index.writes import WriteSet
from atmx.indexer.liveness import Liveness
from atmx.indexer.store.backfill_store import BackfillStore
from atmx.indexer.store.database import EmbeddedPostgres, apply_schema, create_pool, wait_for_database
from atmx.indexer.store.errors import TRANSIENT_DB_ERRORS
from atmx.indexer.store.index_store import Store
from atmx.indexer.store.leader import LeaderLock, lead
from atmx.indexer.store.retention import prune_changes, prune_history, prune_rejections
from atmx.indexer.store.xmtp_store import XmtpStore
from atmx.indexer.version import __version__
from atmx.indexer.xmtp.client import XmtpNetwork, parse_xmtp_api
from atmx.indexer.xmtp.verifier import XmtpVerifier

log = logging.getLogger(__name__)


@dataclass
class Database:
    dsn: str
    pool: asyncpg.Pool
    embedded: EmbeddedPostgres | None = None


@contextlib.asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[Database]:
    embedded = None
    dsn = settings.database_url
    if dsn is None:
        embedded = EmbeddedPostgres(settings.data_dir)
        dsn = await asyncio.to_thread(embedded.start)
    try:
        await wait_for_database(dsn, patience=settings.database_wait)
        pool = await create_pool(dsn)
        try:
            await apply_schema(pool)
            yield Database(dsn=dsn, pool=pool, embedded=embedded)
        finally:
            await pool.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


@dataclass
class Indexer:
    """The live indexer: the firehose stream, the pipeline and its writer, and the gap repair that
    fetches with proof what the firehose cannot be trusted for (new accounts, gaps)."""

    settings: Settings
    store: Store
    session: aiohttp.ClientSession
    pipeline: Pipeline = field(init=False)
    stream: FirehoseStream = field(init=False)
    backfiller: Backfiller = field(init=False)
    repair: GapRepair = field(init=False)
    # called after each applied write set, beside the gap repair's own nudge
    on_written: Callable[[WriteSet], None] | None = None

    async def start(self) -> None:
        self.resolver = IdentityResolver(
            plc_url=self.settings.plc_url,
            handle_resolver=self.settings.handle_resolver,
            cache=self.store,
            allow_insecure_http=self.settings.allow_insecure_http,
            session=self.session,
            on_result=metrics.observe_identity,
        )
        upstream = self.settings.firehose_url
        cursor = await self.store.load_cursor(upstream)
        self.pipeline = Pipeline(
            self.store,
            self.resolver,
            upstream=upstream,
            max_in_flight=self.settings.max_in_flight,
            start_cursor=cursor,
        )
        await self.pipeline.load()
        self.backfiller = Backfiller(
            self.store.pool,
            self.resolver,
            self.session,
            Options.from_settings(self.settings),
            on_tracked=self.pipeline.tracked.add,
            on_recorded=self.pipeline.stored_elsewhere,
        )
        self.repair = GapRepair(self.backfiller)
        self.pipeline.on_written = self._written
        self.stream = FirehoseStream(
            upstream,
            self.pipeline,
            lambda: self.pipeline.mark.last_received,
            stall_timeout=self.settings.stall_timeout,
            on_reset_cursor=self._reset_cursor,
            on_outdated_cursor=lambda: BackfillStore(self.store.pool).queue_all("outdated_cursor"),
        )
        log.info("indexer starting at cursor %s from %s", cursor, upstream)

    async def _reset_cursor(self) -> None:
        await self.pipeline.drain()
        await self.store.pool.execute("DELETE FROM cursors WHERE upstream = $1", self.pipeline.upstream)
        self.pipeline.reset_cursor()

    def _written(self, writes: WriteSet) -> None:
        if writes.resync_reason:
            self.repair.nudge()
        if self.on_written is not None:
            self.on_written(writes)

    async def run(self) -> None:
        try:
            await asyncio.gather(self.stream.run(), self.pipeline.run_writer(), self.repair.run())
        finally:
            await self.backfiller.close()


def _service_auth(settings: Settings) -> tuple[ServiceAuth | None, IdentityResolver | None]:
    """With a service DID, proxied calls' JWTs are checked against issuer keys from this resolver.

    Memory cache only: an API process may run against a read-only replica.
    """
    if settings.service_did is None:
        return None, None

    resolver = IdentityResolver(
        plc_url=settings.plc_url,
        allow_insecure_http=settings.allow_insecure_http,
        on_result=metrics.observe_identity,
    )
    return ServiceAuth(settings.service_did, resolver), resolver


def _request_indexer(settings: Settings, primary: asyncpg.Pool, proxies: tuple[IpNetwork, ...]) -> RequestIndexer:
    """requestIndex fetches with proof and writes to the primary, exactly as the backfill does."""
    resolver = IdentityResolver(
        plc_url=settings.plc_url,
        handle_resolver=settings.handle_resolver,
        cache=Store(primary),
        allow_insecure_http=settings.allow_insecure_http,
        on_result=metrics.observe_identity,
    )
    opts = Options.from_settings(settings)
    client = SyncClient(guarded_session(allow_loopback=settings.allow_insecure_http), opts)
    fetcher = RepoFetcher(resolver, client, known_rkeys=BackfillStore(primary).known_rkeys, workers=opts.workers)
    return RequestIndexer(primary, resolver, fetcher, trusted_proxies=proxies)


def handle_lookup_resolver(settings: Settings) -> IdentityResolver:
    """Resolves the handles the API is asked to look up; an answer is trusted `handle_lookup_ttl`.

    Memory cache only: an API process may run against a read-only replica.
    """
    return IdentityResolver(
        plc_url=settings.plc_url,
        handle_resolver=settings.handle_resolver,
        hit_ttl=settings.handle_lookup_ttl,
        error_ttl=min(settings.handle_lookup_ttl, 10.0),
        unreachable_ttl=min(settings.handle_lookup_ttl, 5.0),
        refresh_min_interval=settings.handle_lookup_ttl,
        allow_insecure_http=settings.allow_insecure_http,
        on_result=metrics.observe_identity,
    )


async def start_api(settings: Settings, pool: asyncpg.Pool, primary: asyncpg.Pool | None = None) -> web.AppRunner:
    """The API reading from `pool`; with `primary`, it also indexes on request (requestIndex)."""
    limit = settings.api_rate_limit
    auth, resolver = _service_auth(settings)
    proxies = parse_networks(",".join(settings.api_trusted_proxies))
    request_indexer = _request_indexer(settings, primary, proxies) if primary is not None else None
    handles = handle_lookup_resolver(settings)
    app = create_app(
        pool_provider=lambda: pool,
        version=__version__,
        metrics_hook=metrics.observe_api,
        rate_limiter=FixedWindowLimiter(RatePolicy(*limit)) if limit else None,
        trusted_proxies=proxies,
        service_did=settings.service_did,
        service_endpoint=settings.service_endpoint,
        service_auth=auth,
        request_indexer=request_indexer,
        handle_resolver=handles.resolve_handle,
    )
    app.on_cleanup.append(lambda _app: handles.close())
    if resolver is not None:
        app.on_cleanup.append(lambda _app: resolver.close())
    if request_indexer is not None:
        app.on_cleanup.append(lambda _app: request_indexer.close())
    host, port = settings.listen_host_port
    try:
        runner = await run_api(app, host, port)
    except OSError as exc:
        why = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise Fatal(
            f"cannot listen on {host}:{port}: {why}; stop the process using it or set ATMX_LISTEN (--listen)"
        ) from None
    log.info("XRPC API listening on http://%s:%d", host, port)
    return runner


@contextlib.asynccontextmanager
async def xmtp_verifier(settings: Settings, store: XmtpStore) -> AsyncIterator[XmtpVerifier]:
    """The XMTP stage: checks that each binding's inbox signed its DID, and keeps checking."""
    async with XmtpNetwork(parse_xmtp_api(settings.xmtp_api), on_call=metrics.observe_xmtp_call) as network:
        yield XmtpVerifier(store, network, recheck=timedelta(seconds=settings.xmtp_recheck))


async def run_indexer(settings: Settings, indexer: Indexer, pool: asyncpg.Pool, session: aiohttp.ClientSession) -> None:
    """The live indexer with gap repair beside it, and with `settings.backfill` the backfill job too.

    Both write through rev-guarded SQL, so live events for a repo being backfilled win by rev.
    """
    tracked = indexer.pipeline.tracked
    bf = indexer.backfiller
    async with (
        BackfillStore(pool).listen_tracked(tracked.add),  # DIDs backfilled by another process
        xmtp_verifier(settings, XmtpStore(pool)) as verifier,
    ):
        indexer.on_written = lambda writes: verifier.nudge() if writes.upserts else None

        async def backfill_job() -> None:
            try:
                summary = await bf.run(default_sources(settings.discovery_host))
            except Fatal as exc:  # e.g. no collection directory on the discovery host
                log.warning("backfill not run: %s", exc)
                return
            except Exception:  # the live indexer keeps running; a rerun resumes the backfill
                log.exception("backfill stopped")
                return
            log.info("%s", bf.progress.summary(summary.outcomes))

        handles = HandleChecker(indexer.store, indexer.resolver, interval=settings.handle_recheck)
        jobs = [indexer.run(), verifier.run(), handles.run(), retention(settings, pool)]
        if settings.backfill:
            jobs.append(backfill_job())
        await asyncio.gather(*jobs)


RETENTION_EVERY = 3600.0


async def retention(settings: Settings, pool: asyncpg.Pool) -> None:
    """Prune the change log, the binding history and the rejections by age, once an hour."""
    jobs = (
        ("changes", settings.change_retention, prune_changes),
        ("history", settings.history_retention, prune_history),
        ("rejections", settings.rejection_retention, prune_rejections),
    )
    while True:
        for name, keep, prune in jobs:
            if keep is None:
                continue
            try:
                n = await prune(pool, datetime.now(UTC) - timedelta(seconds=keep))
            except TRANSIENT_DB_ERRORS as exc:
                metrics.DB_ERRORS.labels("retention").inc()
                log.warning("pruning %s failed (%s); next round in an hour", name, exc)
                continue
            if n:
                log.info("pruned %d %s older than %s", n, name, timedelta(seconds=keep))
        await asyncio.sleep(RETENTION_EVERY)


@contextlib.asynccontextmanager
async def read_pool(settings: Settings, db: Database) -> AsyncIterator[asyncpg.Pool]:
    """The pool the API reads from: a streaming replica with ATMX_DATABASE_READ_URL, else the primary's."""
    if settings.database_read_url is None:
        yield db.pool
        return
    await wait_for_database(settings.database_read_url, patience=settings.database_wait, name="ATMX_DATABASE_READ_URL")
    pool = await create_pool(settings.database_read_url)
    try:
        yield pool
    finally:
        await pool.close()


async def serve(settings: Settings, *, index: bool, api: bool) -> None:
    """Run the indexer and/or the API until cancelled."""
    async with open_database(settings) as db, read_pool(settings, db) as reads, aiohttp.ClientSession() as session:
        runner = await start_api(settings, reads, db.pool) if api else None
        try:
            if index:

                async def index_term() -> None:  # each term starts again from the saved cursor
                    indexer = Indexer(settings, Store(db.pool), session)
                    await indexer.start()
                    liveness = Liveness(indexer.stream, indexer.pipeline, idle_after=settings.idle_after)
                    await asyncio.gather(
                        run_indexer(settings, indexer, db.pool, session),
                        liveness.run(db.pool, indexer.pipeline.upstream),
                    )

                # active/standby: only the holder of the advisory lock indexes
                await lead(LeaderLock(db.dsn), index_term)
            else:
                await asyncio.Event().wait()
        finally:
            if runner is not None:
                await runner.cleanup()
