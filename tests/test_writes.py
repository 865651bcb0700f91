from __future__ import annotations

from atmx.indexer.index.writes import Rejection, StatusUpdate, WriteSet


def test_empty_write_set() -> None:
    assert WriteSet(did="did:plc:x", seq=3).is_empty()
    assert not WriteSet(did="did:plc:x", status=StatusUpdate(True, None)).is_empty()
    assert not WriteSet(did="did:plc:x", rejections=[Rejection("commit", "bad_signature")]).is_empty()
    assert not WriteSet(did="did:plc:x", resync_reason="sync_event").is_empty()
