"""api/responses.py: a binary answer (a CAR proof) with its content type and headers."""

from __future__ import annotations

import dataclasses

import pytest

from atmx.api.responses import Blob


def test_a_blob_holds_bytes_type_and_headers() -> None:
    blob = Blob(b"\x0a\xa1", "application/vnd.ipld.car", {"Atmx-Rev": "3kaaa"})
    assert (blob.body, blob.content_type, blob.headers) == (
        b"\x0a\xa1",
        "application/vnd.ipld.car",
        {"Atmx-Rev": "3kaaa"},
    )


def test_blobs_are_frozen_and_do_not_share_headers() -> None:
    first, second = Blob(b"a", "text/plain"), Blob(b"b", "text/plain")
    assert first.headers == {} and first.headers is not second.headers
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.body = b"c"  # type: ignore[misc]
