from __future__ import annotations

from atmx.indexer.index.writes import MAX_REJECTIONS_PER_EVENT, Rejection, StatusUpdate, WriteSet


def test_empty_write_set() -> None:
    assert WriteSet(did="did:plc:x", seq=3).is_empty()
    assert not WriteSet(did="did:plc:x", status=StatusUpdate(True, None)).is_empty()
    assert not WriteSet(did="did:plc:x", rejections=[Rejection("commit", "bad_signature")]).is_empty()
    assert not WriteSet(did="did:plc:x", resync_reason="sync_event").is_empty()


def test_one_event_records_a_bounded_number_of_rejections() -> None:
    writes = WriteSet(did="did:plc:x")
    for i in range(1000):
        writes.reject(Rejection("record", "invalid_record", f"path {i}"))
    assert len(writes.rejections) == MAX_REJECTIONS_PER_EVENT
    kept = MAX_REJECTIONS_PER_EVENT - 1
    assert [r.detail for r in writes.rejections[:kept]] == [f"path {i}" for i in range(kept)]
    assert writes.rejections[-1] == Rejection("record", "more_rejections", f"{1000 - kept} more")
