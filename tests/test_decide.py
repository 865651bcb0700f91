"""indexer/index/decide.py: what one event writes, rejects or queues for a proof re-fetch (pure).

Commits are real ones (tests/forge.py's RepoBuilder signs them), decoded from their frames the
way the stream decodes them.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from forge import RepoBuilder, SigningKey
from pipeline_harness import XMTP, xmtp_record

from atmx.indexer.firehose.frames import AccountEvent, CommitEvent, MalformedEvent, SyncEvent, decode_frame
from atmx.indexer.index.decide import (
    RepoState,
    decide_account,
    decide_commit,
    decide_malformed,
    decide_sync,
    internal_error,
)

DID = "did:plc:" + "d" * 24
INBOX = XMTP.partition("/")[0]  # XMTP is the record's path


def commit(msg: Any, seq: int = 1) -> CommitEvent:
    ev = decode_frame(msg.to_frame(seq))
    assert isinstance(ev, CommitEvent)
    return ev


def now() -> datetime:
    return datetime.now(UTC)


def chained() -> tuple[RepoBuilder, SigningKey, RepoState]:
    """A repo whose first commit atmx has seen: the state the index holds after it."""
    key = SigningKey.generate()
    repo = RepoBuilder(DID, key)
    first = decide_commit(commit(repo.put("app.bsky.feed.post/1", {"t": 1})), None, key.public_key, now=now())
    assert first.writes is not None and first.writes.repo_state is not None
    return repo, key, RepoState(*first.writes.repo_state)


def test_the_first_commit_starts_the_chain_and_queues_a_proof_fetch() -> None:
    key = SigningKey.generate()
    repo = RepoBuilder(DID, key)
    decision = decide_commit(commit(repo.put(XMTP, xmtp_record())), None, key.public_key, now=now())
    ws = decision.writes
    assert ws is not None and decision.verification == ("commit", "ok")
    assert ws.create_account and ws.resync_reason == "new_account"
    assert ws.upserts == []  # its records come from the proof, not from a commit that may be replayed
    assert ws.repo_state is not None and ws.repo_state[0] == repo.rev
    assert decision.ops == [(INBOX, "create")]


def test_a_chained_commit_writes_its_binding() -> None:
    repo, key, state = chained()
    decision = decide_commit(commit(repo.put(XMTP, xmtp_record())), state, key.public_key, now=now())
    ws = decision.writes
    assert ws is not None and ws.resync_reason is None and not ws.create_account
    assert [(u.collection, u.rkey, u.status) for u in ws.upserts] == [(INBOX, "self", "pending")]
    assert decision.records == [("xmtp", "ok")]  # atmx_records_total: (protocol, reason)


def test_deleting_a_binding() -> None:
    repo, key, state = chained()
    put = decide_commit(commit(repo.put(XMTP, xmtp_record())), state, key.public_key, now=now())
    assert put.writes is not None and put.writes.repo_state is not None
    gone = decide_commit(commit(repo.delete(XMTP)), RepoState(*put.writes.repo_state), key.public_key, now=now())
    assert gone.writes is not None and [(d.collection, d.rkey) for d in gone.writes.deletes] == [(INBOX, "self")]


def test_replays_are_stale() -> None:
    repo, key, state = chained()
    ev = commit(repo.put(XMTP, xmtp_record()))
    assert decide_commit(ev, RepoState(ev.rev, state.data_cid), key.public_key, now=now()).stale == "commit"


def test_a_gap_in_the_chain_queues_a_re_fetch() -> None:
    repo, key, state = chained()
    repo.put("app.bsky.feed.post/2", {"t": 2})  # a commit atmx never saw
    decision = decide_commit(commit(repo.put(XMTP, xmtp_record())), state, key.public_key, now=now())
    assert decision.writes is not None and decision.writes.resync_reason == "missed_commit"


def test_a_commit_without_prev_data_cannot_be_shown_complete() -> None:
    repo, key, state = chained()
    msg = dataclasses.replace(repo.put(XMTP, xmtp_record()), prev_data=None)
    decision = decide_commit(commit(msg), state, key.public_key, now=now())
    assert decision.writes is not None and decision.writes.resync_reason == "no_prev_data"


def test_a_bad_signature_asks_for_a_fresh_key_once_and_never_re_fetches() -> None:
    repo, _key, state = chained()
    ev = commit(repo.put(XMTP, xmtp_record()))
    stranger = SigningKey.generate().public_key
    assert decide_commit(ev, state, stranger, now=now()).refresh_key
    final = decide_commit(ev, state, stranger, now=now(), key_refreshed=True)
    assert final.verification == ("commit", "bad_signature")
    assert final.writes is not None and final.writes.resync_reason is None
    assert [r.reason for r in final.writes.rejections] == ["bad_signature"]


def test_no_signing_key() -> None:
    repo, _key, state = chained()
    decision = decide_commit(commit(repo.put(XMTP, xmtp_record())), state, None, now=now())
    assert decision.verification == ("commit", "no_signing_key")


def test_sync() -> None:
    repo, key, state = chained()
    repo.put(XMTP, xmtp_record())  # the repo moved on; the #sync announces where it is now
    ev = decode_frame(repo.sync_message().to_frame(5))
    assert isinstance(ev, SyncEvent)
    moved = decide_sync(ev, state, key.public_key, now=now())
    assert moved.verification == ("sync", "ok")
    assert moved.writes is not None and moved.writes.resync_reason == "sync_event"
    assert moved.writes.repo_state is not None and moved.writes.repo_state[0] == repo.rev
    data_now = moved.writes.repo_state[1]
    same = decide_sync(ev, RepoState(state.rev, data_now), key.public_key, now=now())
    assert same.writes is not None and same.writes.resync_reason is None  # the records did not change
    assert decide_sync(ev, RepoState(ev.rev, data_now), key.public_key, now=now()).stale == "sync"
    assert decide_sync(ev, None, SigningKey.generate().public_key, now=now()).refresh_key
    assert decide_sync(ev, None, None, now=now()).verification == ("sync", "no_signing_key")


def test_account_status() -> None:
    off = decide_account(AccountEvent(1, DID, "t", False, None)).writes
    assert (
        off is not None and off.status is not None and (off.status.active, off.status.status) == (False, "deactivated")
    )
    down = decide_account(AccountEvent(2, DID, "t", False, "takendown")).writes
    assert down is not None and down.status is not None and down.status.status == "takendown"
    on = decide_account(AccountEvent(3, DID, "t", True, "takendown")).writes
    assert on is not None and on.status is not None and (on.status.active, on.status.status) == (True, None)


def test_malformed_events_re_fetch_the_repo_they_name() -> None:
    assert decide_malformed(MalformedEvent(1, None, "bad_field", "x")).writes is None
    ws = decide_malformed(MalformedEvent(1, DID, "bad_field", "rev is not a TID")).writes
    assert ws is not None and ws.resync_reason == "malformed_event"
    assert [(r.kind, r.reason) for r in ws.rejections] == [("event", "bad_field")]


def test_internal_errors_are_recorded_and_re_fetched() -> None:
    ws = internal_error(DID, KeyError("a bug"))
    assert ws.resync_reason == "internal_error"
    assert ws.rejections[0].detail == "KeyError: 'a bug'"
    assert dataclasses.replace(ws, rejections=[]).did == DID
