"""The pipeline on real signed repos (tests/forge.py), a loopback PLC and a real PostgreSQL.

Forged input must be refused, counted and recorded, and must never reach the index;
the cursor must cover exactly what is written.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from datetime import UTC, datetime

import pytest
from forge import SigningKey, replace_block, rewrite_commit
from metric_samples import sample
from pipeline_harness import DIDCOMM, UPSTREAM, XMTP, Harness, keypackage_record, xmtp_record

from atmx.indexer.firehose.frames import decode_frame
from atmx.indexer.index import process as process_mod
from atmx.indexer.index import writer as writer_mod
from atmx.indexer.index.pipeline import Pipeline


def count_stale(kind: str) -> float:
    return sample("atmx_stale_events_total", kind=kind)


def count(kind: str, reason: str) -> float:
    return sample("atmx_verifications_total", kind=kind, reason=reason)


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
    await harness.feed(forged.to_frame(1), repair=False)
    assert await harness.binding(repo.did, "xmtp") is None
    assert (await harness.rejections(repo.did))[0] in {"cid_mismatch", "missing_block", "ops_do_not_invert"}
    # the signature held, so the commit is real and the relay's account of it is not: the
    # repo's records are fetched with proof, and the PDS's signed answer is what is indexed
    assert await harness.resync_reason(repo.did) == "unverifiable_commit"
    await harness.repair()
    row = await harness.binding(repo.did, "xmtp")
    assert row is not None and row["cid"] == str(repo.records[XMTP].encode())


async def test_ops_that_do_not_invert_are_refused(harness: Harness) -> None:
    repo = harness.new_repo()
    await harness.feed(harness.frame(repo.put(DIDCOMM, keypackage_record())))
    msg = repo.commit({XMTP: xmtp_record(), "app.bsky.feed.post/3kaaa": {"t": 1}})
    forged = dataclasses.replace(msg, ops=tuple(o for o in msg.ops if o.path == XMTP))  # hides an op
    await harness.feed(forged.to_frame(1), repair=False)
    assert await harness.binding(repo.did, "xmtp") is None
    assert await harness.rejections(repo.did) == ["ops_do_not_invert"]
    assert await harness.resync_reason(repo.did) == "unverifiable_commit"


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
    await harness.feed(harness.frame(repo.put(DIDCOMM, keypackage_record())))
    await harness.feed(harness.frame(repo.put("org.xmtp.inbox/other", xmtp_record())))
    assert await harness.binding(repo.did, "xmtp") is None
    assert await harness.rejections(repo.did) == ["bad_rkey"]
    # a commit of 200 such ops costs a bounded number of rows, and repeats only count
    await harness.feed(harness.frame(repo.commit({f"org.xmtp.inbox/k{i}": xmtp_record() for i in range(200)})))
    await harness.feed(harness.frame(repo.put("org.xmtp.inbox/other", xmtp_record())))
    rows = await harness.pool.fetch("SELECT reason, count FROM rejections WHERE did = $1 ORDER BY id", repo.did)
    assert len(rows) <= 9 and rows[-1]["reason"] == "more_rejections"
    assert rows[0]["count"] == 2  # the same rejection again: counted, not added


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
    await harness.feed(harness.frame(repo.put(DIDCOMM, keypackage_record())), repair=False)
    assert await harness.resync_reason(repo.did) == "missed_commit"
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
    await harness.feed(repo.sync_message().to_frame(0), repair=False)
    assert await harness.resync_reason(repo.did) == "sync_event"
    acct = await harness.pipeline.store.account(repo.did)
    assert acct is not None and acct.rev == repo.rev


async def test_unreachable_plc_defers_to_a_resync(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_mod, "IDENTITY_RETRY_DELAYS", (0.01, 0.01))
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
    assert writer_mod.parse_time("2026-11-01T00:00:00.000Z") == datetime(2026, 11, 1, tzinfo=UTC)
    assert writer_mod.parse_time("nonsense") is None


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
    assert acct is not None and acct.rev == repo.rev != first_rev  # the post's commit was verified, not dropped
    assert (acct.active, acct.status) == (False, "deactivated")


async def test_every_commit_of_an_indexed_repo_is_verified_and_chained(harness: Harness) -> None:
    """Commits elsewhere in an indexed repo are verified too (a relay could hide a binding's delete in
    one); they move the chain, a replay changes nothing and a gap queues a repair."""
    repo = harness.new_repo()
    await harness.feed(harness.frame(repo.put(XMTP, xmtp_record())))
    before = count("commit", "ok")
    await harness.feed(harness.frame(repo.put("app.bsky.feed.post/3kaaa", {"t": 1})))
    await harness.feed(harness.frame(repo.put("app.bsky.feed.like/3kbbb", {"t": 2})))
    assert count("commit", "ok") == before + 2
    acct = await harness.pipeline.store.account(repo.did)
    assert acct is not None and acct.rev == repo.rev
    assert await harness.resync_reason(repo.did) is None
    # a replay of an old one changes nothing; a commit whose predecessor was never seen is a gap
    old = repo.put("app.bsky.feed.post/3kccc", {"t": 3})
    await harness.feed(harness.frame(repo.put("app.bsky.feed.post/3kddd", {"t": 4})), repair=False)
    assert await harness.resync_reason(repo.did) == "missed_commit"
    stale = count_stale("commit")
    await harness.feed(old.to_frame(0), repair=False)
    assert count_stale("commit") == stale + 1
    acct = await harness.pipeline.store.account(repo.did)
    assert acct is not None and acct.rev == repo.rev


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
    await harness.repair()  # new accounts' records come with proof from their PDS
    assert await harness.pool.fetchval("SELECT count(*) FROM bindings") == 6


async def test_a_commit_its_diff_cannot_prove_is_refused_and_its_repo_refetched(harness: Harness) -> None:
    """Two ops on one path (what the reference PDS emits for a create and delete in one applyWrites)."""
    repo = harness.new_repo()
    await harness.feed(harness.frame(repo.put(DIDCOMM, keypackage_record())))
    msg = repo.put(XMTP, xmtp_record())
    doubled = dataclasses.replace(msg, ops=(msg.ops[0], msg.ops[0]))
    await harness.feed(doubled.to_frame(0), repair=False)
    assert await harness.binding(repo.did, "xmtp") is None
    assert await harness.rejections(repo.did) == ["bad_ops"]
    assert await harness.resync_reason(repo.did) == "unverifiable_commit"
    await harness.repair()
    assert await harness.binding(repo.did, "xmtp") is not None  # the PDS's signed answer
    # a forged signature is refused without a re-fetch: forgers must not steer atmx's requests
    other = harness.new_repo()
    forged = rewrite_commit(other.put(XMTP, xmtp_record()), key=SigningKey.generate("k256"))
    await harness.feed(forged.to_frame(0), repair=False)
    assert await harness.resync_reason(other.did) is None


async def test_a_restarted_pipeline_reads_repo_state_lazily_and_keeps_the_chain(harness: Harness) -> None:
    repo = harness.new_repo()
    await harness.feed(harness.frame(repo.put(XMTP, xmtp_record())))
    await harness.feed(harness.frame(repo.put("app.bsky.feed.post/3kaaa", {"t": 1})))
    restarted = Pipeline(harness.pipeline.store, harness.pipeline.resolver, upstream=UPSTREAM)
    await restarted.load()
    assert repo.did in restarted.tracked and restarted.repos == {}  # nothing read before it is needed
    harness.pipeline = restarted
    rec = xmtp_record()
    await harness.feed(harness.frame(repo.put(XMTP, rec)))  # since = the post's rev, the stored rev
    assert restarted.repos[repo.did].rev == repo.rev
    assert await harness.pool.fetchval("SELECT count(*) FROM resync_queue WHERE did = $1", repo.did) == 0
    row = await harness.binding(repo.did, "xmtp")
    assert row is not None and row["xmtp_inbox_id"] == rec["id"]
