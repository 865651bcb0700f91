"""A pipeline on real signed repos (tests/forge.py), a loopback PLC and a real PostgreSQL,
shared by the pipeline tests and the hostile-input tiers."""

from __future__ import annotations

import base64
import dataclasses
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from forge import CommitMessage, RepoBuilder, SigningKey

from atmx.indexer.backfill.client import Options
from atmx.indexer.backfill.job import Backfiller
from atmx.indexer.firehose.frames import Event, decode_frame
from atmx.indexer.identity.resolver import IdentityResolver
from atmx.indexer.index.pipeline import Pipeline
from atmx.indexer.repo.crypto import encode_base58btc
from atmx.indexer.store.index_store import Store

UPSTREAM = "ws://test/xrpc/com.atproto.sync.subscribeRepos"
XMTP = "org.xmtp.inbox/self"
DIDCOMM = "at.didcomm.keyPackage/self"


def xmtp_record() -> dict[str, Any]:
    return {
        "$type": "org.xmtp.inbox",
        "id": secrets.token_hex(32),
        "verificationSignature": base64.b64encode(secrets.token_bytes(64)).decode(),
        "createdAt": "2026-11-01T00:00:00.000Z",
    }


def keypackage_record() -> dict[str, Any]:
    raw = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {
        "$type": "at.didcomm.keyPackage",
        "did": "did:peer:2.E" + encode_base58btc(b"\xec\x01" + raw),
        "mediators": ["did:web:mediator.example.com"],
        "createdAt": "2026-11-01T00:00:00.000Z",
    }


class Plc:
    """A loopback PLC directory serving the documents the test registers; every account's PDS
    is the loopback `Pds` below."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.down = False
        self.url = ""
        self.pds_url = "https://pds.example"

    def register(self, did: str, key: SigningKey, handle: str = "handle.invalid") -> None:
        self.docs[did] = {
            "@context": ["https://www.w3.org/ns/did/v1"],
            "id": did,
            "alsoKnownAs": [f"at://{handle}"],
            "verificationMethod": [
                {
                    "id": f"{did}#atproto",
                    "type": "Multikey",
                    "controller": did,
                    "publicKeyMultibase": key.did_key.removeprefix("did:key:"),
                }
            ],
            "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": self.pds_url}],
        }

    async def handle(self, request: web.Request) -> web.Response:
        if self.down:
            return web.Response(status=503)
        doc = self.docs.get(request.match_info["did"])
        return web.json_response(doc) if doc else web.Response(status=404)


class CountingPlc(Plc):
    """The loopback PLC, noting every DID it is asked for (to see what a cache saved)."""

    def __init__(self) -> None:
        super().__init__()
        self.fetches: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches.append(request.match_info["did"])
        return await super().handle(request)


class Pds:
    """A loopback PDS for the repos the test builds: `getRecord` proofs and `listRecords` of
    each repo's current state, as a real PDS answers them."""

    def __init__(self) -> None:
        self.repos: dict[str, RepoBuilder] = {}
        self.down = False

    async def get_record(self, request: web.Request) -> web.Response:
        repo = self.repos.get(request.query.get("did", ""))
        if self.down:
            return web.Response(status=503)
        if repo is None:
            return web.json_response({"error": "RepoNotFound", "message": "no repo"}, status=400)
        path = f"{request.query['collection']}/{request.query['rkey']}"
        return web.Response(body=repo.record_car(path), content_type="application/vnd.ipld.car")

    async def list_records(self, request: web.Request) -> web.Response:
        repo = self.repos.get(request.query.get("repo", ""))
        if repo is None:
            return web.json_response({"error": "RepoNotFound", "message": "no repo"}, status=400)
        prefix = request.query["collection"] + "/"
        records = [
            {"uri": f"at://{repo.did}/{path}", "cid": str(cid.encode()), "value": {}}
            for path, cid in sorted(repo.records.items())
            if path.startswith(prefix)
        ]
        return web.json_response({"records": records})


@dataclasses.dataclass
class Harness:
    pipeline: Pipeline
    plc: Plc
    pds: Pds
    pool: asyncpg.Pool
    backfiller: Backfiller
    seq: int = 0

    def new_repo(self, curve: str = "k256") -> RepoBuilder:
        did = "did:plc:" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(24))
        key = SigningKey.generate(curve)  # type: ignore[arg-type]
        self.plc.register(did, key)
        repo = self.pds.repos[did] = RepoBuilder(did, key)
        return repo

    async def feed(self, *frames: bytes, repair: bool = True) -> None:
        """Offer the frames in order, wait until they are written; then, as the gap-repair worker
        would, fetch with proof every repo they queued (a new account's records come that way)."""
        for frame in frames:
            self.seq += 1
            await self.offer(dataclasses.replace(decode_frame(frame), seq=self.seq))  # type: ignore[type-var]
        await self.pipeline.drain()
        if repair:
            await self.repair()

    async def repair(self) -> None:
        store = self.backfiller.store
        for item in await store.due_resyncs(1000):
            await self.backfiller.process(item.did, "repair", item)

    async def offer(self, ev: Event) -> None:
        if self.pipeline.offer(ev):
            await self.pipeline.wait_room()

    def frame(self, msg: CommitMessage) -> bytes:
        return msg.to_frame(self.seq + 1)

    async def binding(self, did: str, protocol: str) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self.pool.fetchrow(
            "SELECT * FROM bindings WHERE did = $1 AND protocol = $2", did, protocol
        )
        return row

    async def resync_reason(self, did: str) -> str | None:
        reason: str | None = await self.pool.fetchval("SELECT reason FROM resync_queue WHERE did = $1", did)
        return reason

    async def rejections(self, did: str) -> list[str]:
        return [r["reason"] for r in await self.pool.fetch("SELECT reason FROM rejections WHERE did = $1", did)]


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@pytest.fixture
async def harness(db_pool: asyncpg.Pool) -> AsyncIterator[Harness]:
    plc, pds = Plc(), Pds()
    plc_app = web.Application()
    plc_app.router.add_get("/{did}", plc.handle)
    pds_app = web.Application()
    pds_app.router.add_get("/xrpc/com.atproto.sync.getRecord", pds.get_record)
    pds_app.router.add_get("/xrpc/com.atproto.repo.listRecords", pds.list_records)
    plc_runner, plc.url = await _serve(plc_app)
    pds_runner, plc.pds_url = await _serve(pds_app)
    async with aiohttp.ClientSession() as session:
        store = Store(db_pool)
        resolver = IdentityResolver(
            plc.url, cache=store, session=session, handle_resolver=plc.url, allow_insecure_http=True
        )
        p = Pipeline(store, resolver, upstream=UPSTREAM)
        await p.load()
        opts = Options(host_rate=10_000, host_burst=10_000, attempts=1, allow_insecure_http=True)
        bf = Backfiller(db_pool, resolver, session, opts, on_tracked=p.tracked.add)
        yield Harness(p, plc, pds, db_pool, bf)
        await bf.close()
    await pds_runner.cleanup()
    await plc_runner.cleanup()
