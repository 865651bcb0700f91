"""The pipeline on real signed repos (tests/forge.py), a loopback PLC and a real PostgreSQL.

Forged input must be refused, counted and recorded, and must never reach the index;
the cursor must cover exactly what is written.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from forge import CommitMessage, RepoBuilder, SigningKey, replace_block, rewrite_commit

from atmx.indexer import metrics
from atmx.indexer.firehose.frames import Event, decode_frame
from atmx.indexer.identity.resolver import IdentityResolver
from atmx.indexer.index import pipeline as pipeline_mod
from atmx.indexer.index.pipeline import Pipeline
from atmx.indexer.repo.multibase import b58encode
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
        "did": "did:peer:2.Ez" + b58encode(b"\xec\x01" + raw),
        "mediators": ["did:web:mediator.example.com"],
        "createdAt": "2026-11-01T00:00:00.000Z",
    }


class Plc:
    """A loopback PLC directory serving the documents the test registers."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.down = False
        self.url = ""

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
            "service": [
                {"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": "https://pds.example"}
            ],
        }

    async def handle(self, request: web.Request) -> web.Response:
        if self.down:
            return web.Response(status=503)
        doc = self.docs.get(request.match_info["did"])
        return web.json_response(doc) if doc else web.Response(status=404)


@dataclasses.dataclass
class Harness:
    pipeline: Pipeline
    plc: Plc
    pool: asyncpg.Pool
    seq: int = 0

    def new_repo(self, curve: str = "k256") -> RepoBuilder:
        did = "did:plc:" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(24))
        key = SigningKey.generate(curve)  # type: ignore[arg-type]
        self.plc.register(did, key)
        return RepoBuilder(did, key)

    async def feed(self, *frames: bytes) -> None:
        for frame in frames:
            self.seq += 1
            await self.offer(dataclasses.replace(decode_frame(frame), seq=self.seq))  # type: ignore[type-var]
        await self.pipeline.drain()

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

    async def seen_rev(self, did: str) -> str | None:
        rev: str | None = await self.pool.fetchval("SELECT seen_rev FROM accounts WHERE did = $1", did)
        return rev

    async def rejections(self, did: str) -> list[str]:
        return [r["reason"] for r in await self.pool.fetch("SELECT reason FROM rejections WHERE did = $1", did)]


@pytest.fixture
async def harness(db_pool: asyncpg.Pool) -> AsyncIterator[Harness]:
    plc = Plc()
    app = web.Application()
    app.router.add_get("/{did}", plc.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    plc.url = f"http://{host}:{port}"
    async with aiohttp.ClientSession() as session:
        store = Store(db_pool)
        resolver = IdentityResolver(plc.url, cache=store, session=session, handle_resolver=plc.url)
        p = Pipeline(store, resolver, upstream=UPSTREAM)
        await p.load()
        yield Harness(p, plc, db_pool)
    await runner.cleanup()


def count(kind: str, reason: str) -> float:
    value: float = metrics.VERIFICATIONS.labels(kind, reason)._value.get()
    return value


async def test_verified_records_are_indexed(harness: Harness) -> None:
    repo = harness.new_repo("k256")
    rec = xmtp_record()
    await harness.feed(harness.frame(repo.put(XMTP, rec)))
    row = await harness.binding(repo.did, "xmtp")
    assert row is not None
    assert (row["status"], row["xmtp_inbox_id"], row["rev"]) == ("pending", rec["id"], repo.rev)
    assert row["uri"] == f"at://{repo.did}/{XMTP}" and row["record"] == rec
    acct = await harness.pipeline.store.account(repo.did)
    assert acct is not None and acct.rev == repo.rev and acct.data_cid == str(repo.data.encode())

    p256 = harness.new_repo("p256")
    await harness.feed(harness.frame(p256.put(DIDCOMM, keypackage_record())))
    row = await harness.binding(p256.did, "didcomm")
    assert row is not None and row["status"] == "valid"


async def test_irrelevant_commits_from_unknown_repos_are_not_touched(harness: Harness) -> None:
    repo = harness.new_repo()
    await harness.feed(harness.frame(repo.put("app.bsky.feed.post/3kabc", {"text": "hi", "createdAt": "x"})))
    assert await harness.pipeline.store.account(repo.did) is None
    assert harness.pipeline.mark.value == harness.seq


async def test_wrong_key_is_refused_counted_and_recorded(harness: Harness) -> None:
    repo = harness.new_repo()
    forged = rewrite_commit(repo.put(XMTP, xmtp_record()), key=SigningKey.generate("k256"))
    before = count("commit", "bad_signature")
    await harness.feed(forged.to_frame(1))
    assert await harness.binding(repo.did, "xmtp") is None
    assert await harness.rejections(repo.did) == ["bad_signature"]
    assert count("commit", "bad_signature") == before + 1
    assert harness.pipeline.mark.value == harness.seq  # processed (refused), not stuck


async def test_record_cid_not_in_the_mst_is_refused(harness: Harness) -> None:
    repo = harness.new_repo()
    msg = repo.put(XMTP, xmtp_record())
    other = repo.put("app.bsky.feed.like/3kzzz", {"x": 1})  # a CID that exists, at another path
    op = dataclasses.replace(msg.ops[0], cid=other.ops[0].cid)
    forged = dataclasses.replace(msg, ops=(op,))
    await harness.feed(forged.to_frame(1))
    assert await harness.binding(repo.did, "xmtp") is None
    assert (await harness.rejections(repo.did))[0] in {"cid_mismatch", "missing_block"}


async def test_ops_that_do_not_invert_are_refused(harness: Harness) -> None:
    repo = harness.new_repo()
    await harness.feed(harness.frame(repo.put(DIDCOMM, keypackage_record())))
    msg = repo.commit({XMTP: xmtp_record(), "app.bsky.feed.post/3kaaa": {"t": 1}})
    forged = dataclasses.replace(msg, ops=tuple(o for o in msg.ops if o.path == XMTP))  # hides an op
    await harness.feed(forged.to_frame(1))
    assert await harness.binding(repo.did, "xmtp") is None
    assert await harness.rejections(repo.did) == ["ops_do_not_invert"]


async def test_tampered_block_is_refused(harness: Harness) -> None:
    repo = harness.new_repo()
    msg = repo.put(XMTP, xmtp_record())
    from cbrrr import CID

    forged = dataclasses.replace(msg, blocks=replace_block(msg.blocks, CID(msg.ops[0].cid), b"\xa0"))
    await harness.feed(forged.to_frame(1))
    assert await harness.binding(repo.did, "xmtp") is None
    assert await harness.rejections(repo.did) == ["hash_mismatch"]


async def test_malformed_record_is_stored_invalid_with_its_reason(harness: Harness) -> None:
    repo = harness.new_repo()
    bad = xmtp_record()
    bad["verificationSignature"] = base64.b64encode(b"short").decode()
    await harness.feed(harness.frame(repo.put(XMTP, bad)))
    row = await harness.binding(repo.did, "xmtp")
    assert row is not None and (row["status"], row["reason"]) == ("invalid", "bad_signature_encoding")
    assert row["xmtp_inbox_id"] is None  # never resolvable by inbox


async def test_non_self_rkey_is_refused(harness: Harness) -> None:
    repo = harness.new_repo()
    await harness.feed(harness.frame(repo.put("org.xmtp.inbox/other", xmtp_record())))
    assert await harness.binding(repo.did, "xmtp") is None
    assert await harness.rejections(repo.did) == ["bad_rkey"]


async def test_replayed_older_commit_changes_nothing(harness: Harness) -> None:
    repo = harness.new_repo()
    first = repo.put(XMTP, xmtp_record())
    second_rec = xmtp_record()
    second = repo.put(XMTP, second_rec)
    await harness.feed(harness.frame(first), second.to_frame(0), first.to_frame(0))
    row = await harness.binding(repo.did, "xmtp")
    assert row is not None and row["xmtp_inbox_id"] == second_rec["id"]


async def test_delete_removes_the_binding(harness: Harness) -> None:
    repo = harness.new_repo()
    await harness.feed(harness.frame(repo.put(XMTP, xmtp_record())))
    await harness.feed(harness.frame(repo.delete(XMTP)))
    assert await harness.binding(repo.did, "xmtp") is None


async def test_missed_commit_queues_a_resync(harness: Harness) -> None:
    repo = harness.new_repo()
    await harness.feed(harness.frame(repo.put(XMTP, xmtp_record())))
    repo.put("app.bsky.feed.post/3kaaa", {"t": 1})  # never delivered
    await harness.feed(harness.frame(repo.put(DIDCOMM, keypackage_record())))
    assert await harness.pool.fetchval("SELECT reason FROM resync_queue WHERE did = $1", repo.did) == "missed_commit"
    assert await harness.binding(repo.did, "didcomm") is not None  # still proven, so applied


async def test_account_status_and_sync(harness: Harness) -> None:
    repo = harness.new_repo()
    await harness.feed(harness.frame(repo.put(XMTP, xmtp_record())))
    from atmx.indexer.firehose.frames import AccountEvent

    harness.seq += 1
    await harness.offer(AccountEvent(harness.seq, repo.did, "t", False, "takendown"))
    await harness.pipeline.drain()
    acct = await harness.pipeline.store.account(repo.did)
    assert acct is not None and (acct.active, acct.status) == (False, "takendown")

    repo.put("app.bsky.feed.post/3kaaa", {"t": 1})  # changes data; the #sync announces the new state
    await harness.feed(repo.sync_message().to_frame(0))
    assert await harness.pool.fetchval("SELECT reason FROM resync_queue WHERE did = $1", repo.did) == "sync_event"
    acct = await harness.pipeline.store.account(repo.did)
    assert acct is not None and acct.rev == repo.rev


async def test_unreachable_plc_defers_to_a_resync(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline_mod, "IDENTITY_RETRY_DELAYS", (0.01, 0.01))
    repo = harness.new_repo()
    harness.plc.down = True
    await harness.feed(harness.frame(repo.put(XMTP, xmtp_record())))
    assert await harness.binding(repo.did, "xmtp") is None
    assert await harness.rejections(repo.did) == ["identity_unavailable"]
    assert await harness.pool.fetchval("SELECT reason FROM resync_queue WHERE did = $1", repo.did) == (
        "identity_unavailable"
    )


async def test_cursor_covers_exactly_what_is_written(harness: Harness) -> None:
    repos = [harness.new_repo() for _ in range(5)]
    msgs = [r.put(XMTP, xmtp_record()) for _ in range(3) for r in repos]
    await harness.feed(*(m.to_frame(0) for m in msgs))
    await harness.pipeline.flush_cursor()
    assert await harness.pipeline.store.load_cursor(UPSTREAM) == harness.seq
    rows = await harness.pool.fetch("SELECT did, rev FROM bindings")
    assert {r["did"]: r["rev"] for r in rows} == {r.did: r.rev for r in repos}


def test_time_parsing() -> None:
    assert pipeline_mod.parse_time("2026-11-01T00:00:00.000Z") == datetime(2026, 11, 1, tzinfo=UTC)
    assert pipeline_mod.parse_time("nonsense") is None


async def test_events_right_behind_a_first_commit_are_kept(harness: Harness) -> None:
    """An unrelated commit and an #account queued while the DID's first indexed commit is still in
    flight belong to a DID about to be tracked: they must not be dropped as untracked."""
    from atmx.indexer.firehose.frames import AccountEvent

    repo = harness.new_repo()
    first = repo.put(XMTP, xmtp_record()).to_frame(0)
    first_rev = repo.rev
    post = repo.put("app.bsky.feed.post/3kaaa", {"t": 1}).to_frame(0)
    await harness.offer(dataclasses.replace(decode_frame(first), seq=harness.seq + 1))  # type: ignore[type-var]
    await harness.offer(dataclasses.replace(decode_frame(post), seq=harness.seq + 2))  # type: ignore[type-var]
    await harness.offer(AccountEvent(harness.seq + 3, repo.did, "t", False, "deactivated"))
    harness.seq += 3
    await harness.pipeline.drain()
    acct = await harness.pipeline.store.account(repo.did)
    assert acct is not None and acct.rev == first_rev  # the last verified commit
    assert await harness.seen_rev(repo.did) == repo.rev  # the post's commit was followed, not dropped
    assert (acct.active, acct.status) == (False, "deactivated")


async def test_unrelated_commits_of_an_indexed_repo_are_followed_not_verified(harness: Harness) -> None:
    """Commits elsewhere in an indexed repo only move the chain (seen_rev); a gap among them queues a repair."""
    repo = harness.new_repo()
    await harness.feed(harness.frame(repo.put(XMTP, xmtp_record())))
    verified_rev = repo.rev
    before = count("commit", "ok")
    await harness.feed(harness.frame(repo.put("app.bsky.feed.post/3kaaa", {"t": 1})))
    await harness.feed(harness.frame(repo.put("app.bsky.feed.like/3kbbb", {"t": 2})))
    assert count("commit", "ok") == before  # nothing verified: nothing served depends on them
    assert await harness.seen_rev(repo.did) == repo.rev
    acct = await harness.pipeline.store.account(repo.did)
    assert acct is not None and acct.rev == verified_rev
    assert await harness.pool.fetchval("SELECT count(*) FROM resync_queue WHERE did = $1", repo.did) == 0
    # a replay of an old one changes nothing
    old = repo.put("app.bsky.feed.post/3kccc", {"t": 3})
    await harness.feed(harness.frame(repo.put("app.bsky.feed.post/3kddd", {"t": 4})))
    await harness.feed(old.to_frame(0))
    assert await harness.seen_rev(repo.did) == repo.rev
    assert await harness.pool.fetchval("SELECT reason FROM resync_queue WHERE did = $1", repo.did) == "missed_commit"
    # the next matched commit follows the chain seen so far: no new gap, and it is verified
    await harness.pool.execute("DELETE FROM resync_queue")
    await harness.feed(harness.frame(repo.put(DIDCOMM, keypackage_record())))
    assert count("commit", "ok") == before + 1
    assert await harness.pool.fetchval("SELECT count(*) FROM resync_queue") == 0
    assert await harness.binding(repo.did, "didcomm") is not None


async def test_a_malformed_event_is_skipped_and_its_repo_repaired(harness: Harness) -> None:
    from atmx.indexer.firehose.frames import MalformedEvent

    repo = harness.new_repo()
    harness.seq += 1
    await harness.offer(MalformedEvent(harness.seq, repo.did, "bad_field", "field rev is not a TID"))
    harness.seq += 1
    await harness.offer(MalformedEvent(harness.seq, None, "missing_field", "missing field repo"))
    await harness.pipeline.drain()
    assert harness.pipeline.mark.value == harness.seq
    assert await harness.rejections(repo.did) == ["bad_field"]
    assert await harness.pool.fetchval("SELECT reason FROM resync_queue WHERE did = $1", repo.did) == (
        "malformed_event"
    )


async def test_a_record_postgresql_cannot_store_does_not_wedge_the_stream(harness: Harness) -> None:
    repo = harness.new_repo()
    rec = {**keypackage_record(), "label": "phone\x00"}
    await harness.feed(harness.frame(repo.put(DIDCOMM, rec)))
    other = harness.new_repo()
    await harness.feed(harness.frame(other.put(XMTP, xmtp_record())))
    row = await harness.binding(repo.did, "didcomm")
    assert row is not None and (row["status"], row["reason"]) == ("invalid", "nul_character")
    assert await harness.binding(other.did, "xmtp") is not None
    assert await harness.pipeline.store.load_cursor(UPSTREAM) == harness.seq


async def test_back_pressure_holds_the_intake_until_the_batch_is_written(harness: Harness) -> None:
    harness.pipeline.max_in_flight = 3
    repos = [harness.new_repo() for _ in range(6)]
    for r in repos:
        harness.seq += 1
        ev = decode_frame(r.put(XMTP, xmtp_record()).to_frame(0))
        full = harness.pipeline.offer(dataclasses.replace(ev, seq=harness.seq))  # type: ignore[type-var]
    assert full and harness.pipeline.busy()  # new accounts wait on their handle checks: six in flight
    await asyncio.sleep(0.5)
    assert harness.pipeline.busy(), "processed but unwritten events still count"
    writer = asyncio.create_task(harness.pipeline.run_writer())
    try:
        await asyncio.wait_for(harness.pipeline.wait_room(), 10)
        await harness.pipeline.drain()
    finally:
        writer.cancel()
    assert not harness.pipeline.busy()
    assert await harness.pool.fetchval("SELECT count(*) FROM bindings") == 6


async def test_a_commit_its_diff_cannot_prove_is_refused_and_its_repo_refetched(harness: Harness) -> None:
    """Two ops on one path (what the reference PDS emits for a create and delete in one applyWrites)."""
    repo = harness.new_repo()
    msg = repo.put(XMTP, xmtp_record())
    doubled = dataclasses.replace(msg, ops=(msg.ops[0], msg.ops[0]))
    await harness.feed(doubled.to_frame(0))
    assert await harness.binding(repo.did, "xmtp") is None
    assert await harness.rejections(repo.did) == ["bad_ops"]
    assert await harness.pool.fetchval("SELECT reason FROM resync_queue WHERE did = $1", repo.did) == (
        "unverifiable_commit"
    )
    # a forged signature is refused without a re-fetch: forgers must not steer atmx's requests
    other = harness.new_repo()
    forged = rewrite_commit(other.put(XMTP, xmtp_record()), key=SigningKey.generate("k256"))
    await harness.feed(forged.to_frame(0))
    assert await harness.pool.fetchval("SELECT count(*) FROM resync_queue WHERE did = $1", other.did) == 0


async def test_a_restarted_pipeline_reads_repo_state_lazily_and_keeps_the_chain(harness: Harness) -> None:
    repo = harness.new_repo()
    await harness.feed(harness.frame(repo.put(XMTP, xmtp_record())))
    await harness.feed(harness.frame(repo.put("app.bsky.feed.post/3kaaa", {"t": 1})))
    restarted = Pipeline(harness.pipeline.store, harness.pipeline.resolver, upstream=UPSTREAM)
    await restarted.load()
    assert repo.did in restarted.tracked and restarted.repos == {}  # nothing read before it is needed
    harness.pipeline = restarted
    rec = xmtp_record()
    await harness.feed(harness.frame(repo.put(XMTP, rec)))  # since = the post's rev, saved as seen_rev
    assert restarted.repos[repo.did].rev == repo.rev
    assert await harness.pool.fetchval("SELECT count(*) FROM resync_queue WHERE did = $1", repo.did) == 0
    row = await harness.binding(repo.did, "xmtp")
    assert row is not None and row["xmtp_inbox_id"] == rec["id"]
