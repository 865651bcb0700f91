"""indexer/records/datamodel.py: atproto `bytes`, the `uri` format and UTF-8 string lengths."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atmx.indexer.records.datamodel import MAX_URI_BYTES, as_bytes, bytes_json, is_uri, utf8_length
from atmx.indexer.records.envelope import RecordError


@given(st.binary(max_size=100))
def test_bytes_round_trip(raw: bytes) -> None:
    assert as_bytes(bytes_json(raw), "bad_key", "key") == raw


def test_bytes_json_is_unpadded_standard_base64() -> None:
    assert bytes_json(b"\xfb\xff") == {"$bytes": "+/8"}


@pytest.mark.parametrize(
    "value",
    [
        "AAAA",
        {"$bytes": 3},
        {"$bytes": "AAAA", "extra": 1},
        {"$bytes": "AA=="},  # padded
        {"$bytes": "AA-_"},  # base64url
        {"$bytes": "A"},  # no byte has one leftover character
        {"$bytes": "AB"},  # non-zero padding bits: not canonical
    ],
)
def test_not_bytes(value: object) -> None:
    with pytest.raises(RecordError) as e:
        as_bytes(value, "bad_key", "key")
    assert e.value.reason == "bad_key"


def test_utf8_length_counts_bytes() -> None:
    assert utf8_length("abc") == 3
    assert utf8_length("é") == 2
    assert utf8_length("👍") == 4
    assert utf8_length("\ud800") is None  # a lone surrogate is not Unicode text


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("https://example.com/x", True),
        ("did:plc:abc", True),
        ("at://did:plc:abc/app.bsky.feed.post/1", True),
        ("mailto:someone@example.com", True),
        ("no-scheme", False),
        ("https:/one-slash", False),
        ("https://has space", False),
        ("1http://x", False),
        ("https://exämple.com", False),
        (7, False),
        ("https://" + "a" * MAX_URI_BYTES, False),
    ],
)
def test_is_uri(value: object, ok: bool) -> None:
    assert is_uri(value) is ok
