"""Wires the parts into running services: database, indexer (stream + pipeline), API."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

import aiohttp
import asyncpg
from aiohttp import web

from atmx.indexer import __version__, metrics
from atmx.indexer.backfill.job import backfiller, default_sources
from atmx.indexer.backfill.repair import GapRepair
from atmx.indexer.config import Settings
from atmx.indexer.fatal import Fatal
from atmx.indexer.firehose.stream import FirehoseStream
from atmx.indexer.identity.resolver import IdentityResolver
from atmx.indexer.index.pipeline import Pipeline
from atmx.indexer.index.writes import WriteSet
from atmx.indexer.liveness import Liveness
from atmx.indexer.store.backfill_store import BackfillStore
from atmx.indexer.store.database import EmbeddedPostgres, apply_schema, create_pool, wait_for_database
from atmx.indexer.store.index_store import Store
from atmx.indexer.store.leader import LeaderLock, lead
from atmx.indexer.xmtp.client import XmtpNetwork, parse_xmtp_api
from atmx.indexer.xmtp.verifier import XmtpVerifier

if TYPE_CHECKING:
    from atmx.api.auth import ServiceAuth

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
    settings: Settings
    store: Store
    session: aiohttp.ClientSession
    pipeline: Pipeline = field(init=False)
    stream: FirehoseStream = field(init=False)

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

    async def run(self) -> None:
        await asyncio.gather(self.stream.run(), self.pipeline.run_writer())


def _service_auth(settings: Settings) -> tuple[ServiceAuth | None, IdentityResolver | None]:
    """With a service DID, proxied calls' JWTs are checked against issuer keys from this resolver.

    Memory cache only: an API process may run against a read-only replica.
    """
    if settings.service_did is None:
        return None, None
    from atmx.api.auth import ServiceAuth

    resolver = IdentityResolver(
        plc_url=settings.plc_url,
        allow_insecure_http=settings.allow_insecure_http,
        on_result=metrics.observe_identity,
    )
    return ServiceAuth(settings.service_did, resolver), resolver


async def start_api(settings: Settings, pool: asyncpg.Pool) -> web.AppRunner:
    from atmx.api.app import create_app, run_api
    from atmx.api.ratelimit import FixedWindowLimiter, RatePolicy, parse_networks

    limit = settings.api_rate_limit
    auth, resolver = _service_auth(settings)
    app = create_app(
        pool_provider=lambda: pool,
        version=__version__,
        metrics_hook=metrics.observe_api,
        rate_limiter=FixedWindowLimiter(RatePolicy(*limit)) if limit else None,
        trusted_proxies=parse_networks(",".join(settings.api_trusted_proxies)),
        service_did=settings.service_did,
        service_endpoint=settings.service_endpoint,
        service_auth=auth,
    )
    if resolver is not None:
        app.on_cleanup.append(lambda _app: resolver.close())
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
async def xmtp_verifier(settings: Settings, store: Store) -> AsyncIterator[XmtpVerifier]:
    """The XMTP stage: checks that each binding's inbox signed its DID, and keeps checking."""
    async with XmtpNetwork(parse_xmtp_api(settings.xmtp_api), on_call=metrics.observe_xmtp_call) as network:
        yield XmtpVerifier(store, network, recheck=timedelta(seconds=settings.xmtp_recheck))


async def run_indexer(settings: Settings, indexer: Indexer, pool: asyncpg.Pool, session: aiohttp.ClientSession) -> None:
    """The live indexer with gap repair beside it, and with `settings.backfill` the backfill job too.

    Both write through rev-guarded SQL, so live events for a repo being backfilled win by rev.
    """
    tracked = indexer.pipeline.tracked
    async with (
        backfiller(settings, pool, session, resolver=indexer.resolver, on_tracked=tracked.add) as bf,
        BackfillStore(pool).listen_tracked(tracked.add),  # DIDs backfilled by another process
        xmtp_verifier(settings, indexer.store) as verifier,
    ):
        repair = GapRepair(bf)

        def written(writes: WriteSet) -> None:
            if writes.upserts:
                verifier.nudge()
            if writes.resync_reason:
                repair.nudge()

        indexer.pipeline.on_written = written

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

        jobs = [indexer.run(), repair.run(), verifier.run()]
        if settings.backfill:
            jobs.append(backfill_job())
        await asyncio.gather(*jobs)


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
        runner = await start_api(settings, reads) if api else None
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
