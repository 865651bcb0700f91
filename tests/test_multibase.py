"""Base58btc round trips and known vectors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atmx.indexer.repo.multibase import Base58Error, b58decode, b58encode, decode_multibase_z

# Vectors from the base58 IETF draft (draft-msporny-base58) and Bitcoin's test suite.
VECTORS = [
    (b"", ""),
    (b"\0", "1"),
    (b"\0\0\0", "111"),
    (b"Hello World!", "2NEpo7TZRRrLZSi2U"),
    (
        b"The quick brown fox jumps over the lazy dog.",
        "USm3fpXnKG5EUBx2ndxBDMPVciP5hGey2Jh4NDv6gmeo1LkMeiKrLJUUBk6Z",
    ),
    (bytes.fromhex("0000287fb4cd"), "11233QC4"),
    (bytes.fromhex("61"), "2g"),
    (bytes.fromhex("626262"), "a3gV"),
]


@pytest.mark.parametrize(("raw", "text"), VECTORS)
def test_vectors(raw: bytes, text: str) -> None:
    assert b58encode(raw) == text
    assert b58decode(text) == raw


def test_did_key_multikey_prefix() -> None:
    # A secp256k1 did:key decodes to the e7 01 multicodec prefix and a 33-byte compressed point.
    raw = decode_multibase_z("zQ3shZc2QzApp2oymGvQbzP8eKheVshBHbU4ZYjeXqwSKEn6N")
    assert raw[:2] == b"\xe7\x01"
    assert len(raw) == 35
    assert raw[2] in (2, 3)


@pytest.mark.parametrize("bad", ["0", "O", "I", "l", "abc+", "z z", "é"])
def test_rejects_characters_outside_the_alphabet(bad: str) -> None:
    with pytest.raises(Base58Error):
        b58decode(bad)


def test_multibase_prefix_required() -> None:
    with pytest.raises(Base58Error):
        decode_multibase_z("Q3shZc2QzApp2oymGvQbzP8eKheVshBHbU4ZYjeXqwSKEn6N")


@given(st.binary(max_size=80))
def test_round_trip(raw: bytes) -> None:
    assert b58decode(b58encode(raw)) == raw
