"""The pre-filter on the real devnet frames: what it decodes in full, what it skips, and that it
never loses a seq."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from libipld import encode_dag_cbor

from atmx.indexer.firehose.frames import (
    CommitEvent,
    FrameError,
    MalformedEvent,
    SkippedEvent,
    UnknownEvent,
    decode_frame,
    event_did,
    event_seq,
)
from atmx.indexer.firehose.prefilter import Prefilter, touches_indexed_collections
from atmx.indexer.records.registry import COLLECTION_PREFIXES


def touches_collections(ev: CommitEvent) -> bool:
    return any(op.path.startswith(COLLECTION_PREFIXES) for op in ev.ops)


FRAMES = Path(__file__).parent / "fixtures" / "devnet-frames"
LIVE = [p.read_bytes() for p in sorted(FRAMES.glob("*-live-*.bin"))]
EVENTS = [decode_frame(f) for f in LIVE]
DIDS = sorted({d for d in map(event_did, EVENTS) if d is not None})


def message(t: str, body: dict[str, object]) -> bytes:
    return bytes(encode_dag_cbor({"op": 1, "t": t})) + bytes(encode_dag_cbor(body))


def test_nobody_indexed_only_matched_commits_are_decoded() -> None:
    pf = Prefilter(lambda did: False)
    out = [pf.decode(f) for f in LIVE]
    for full, got in zip(EVENTS, out, strict=True):
        if isinstance(full, CommitEvent) and touches_collections(full):
            assert got == full
        else:
            assert got == SkippedEvent(event_seq(full), getattr(full, "time", None))  # type: ignore[arg-type]
    assert any(isinstance(ev, CommitEvent) for ev in out) and any(isinstance(ev, SkippedEvent) for ev in out)
    assert sum(pf.counts.values()) == len(LIVE)
    assert pf.counts["commit"] == sum(isinstance(ev, CommitEvent) for ev in EVENTS)


def test_indexed_repos_get_every_event_in_full() -> None:
    """Every commit of an indexed repo is verified, so each one is decoded with every field."""
    pf = Prefilter(lambda did: True)
    for full, got in zip(EVENTS, map(pf.decode, LIVE), strict=True):
        assert got == full


@given(st.sets(st.sampled_from(DIDS)))
def test_every_seq_comes_through_whatever_is_indexed(indexed: set[str]) -> None:
    pf = Prefilter(indexed.__contains__)
    assert [event_seq(pf.decode(f)) for f in LIVE] == [event_seq(ev) for ev in EVENTS]


def test_malformed_fields_of_a_needed_event_make_a_malformed_event() -> None:
    did = DIDS[0]
    bad_rev = {"seq": 7, "repo": did, "rev": "not-a-tid", "since": None, "time": "t", "ops": [], "blocks": b""}
    got = Prefilter(lambda d: True).decode(message("#commit", bad_rev))
    assert isinstance(got, MalformedEvent) and (got.seq, got.did, got.reason) == (7, did, "bad_field")
    # the same event for a repo nobody indexes is skipped: its fields are never looked at
    assert Prefilter(lambda d: False).decode(message("#commit", bad_rev)) == SkippedEvent(7, "t")
    # a matched commit with a broken op is needed whoever indexes what
    ops = [{"action": "explode", "path": "org.xmtp.inbox/self", "cid": None}]
    got = Prefilter(lambda d: False).decode(message("#commit", {**bad_rev, "ops": ops}))
    assert isinstance(got, MalformedEvent) and got.did == did
    # a malformed event naming no valid DID keeps its seq, and no DID
    got = Prefilter(lambda d: True).decode(message("#account", {"seq": 9, "did": "nope", "time": "t"}))
    assert isinstance(got, MalformedEvent) and (got.seq, got.did, got.reason) == (9, None, "missing_field")


def test_events_without_a_usable_seq_move_nothing() -> None:
    got = Prefilter(lambda d: False).decode(message("#identity", {"seq": "1", "did": DIDS[0], "time": "t"}))
    assert got == UnknownEvent("#identity", None)
    with pytest.raises(FrameError) as info:  # needed, malformed, and no seq to move past: broken stream
        Prefilter(lambda d: True).decode(message("#identity", {"seq": -1, "did": DIDS[0], "time": "t"}))
    assert info.value.reason == "bad_field"  # seq -1 is present but out of range


def test_broken_framing_is_a_frame_error() -> None:
    for data in (b"\xff\x00garbage", bytes(encode_dag_cbor({"op": 1})), LIVE[0] + b"\x00"):
        with pytest.raises(FrameError):
            Prefilter(lambda d: True).decode(data)


def test_op_paths_are_looked_at_without_trusting_their_shape() -> None:
    assert touches_indexed_collections([{"path": "at.didcomm.keyPackage/self"}])
    assert not touches_indexed_collections([{"path": "app.bsky.feed.post/3k"}, "junk", {"path": 5}, {}])
    assert not touches_indexed_collections("org.xmtp.inbox/self")
    assert not touches_indexed_collections([{"path": "org.xmtp.inboxes/self"}])  # a prefix is not a collection
