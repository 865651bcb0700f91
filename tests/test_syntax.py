"""atproto string syntax against the atproto-interop-tests vectors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atmx.indexer.repo import syntax

VECTORS = Path(__file__).parent / "fixtures" / "interop" / "syntax"

CHECKS = {
    "did": syntax.is_did,
    "handle": syntax.is_handle,
    "nsid": syntax.is_nsid,
    "tid": syntax.is_tid,
    "recordkey": syntax.is_record_key,
    "datetime": syntax.is_datetime,
    "atidentifier": syntax.is_at_identifier,
}


def _lines(name: str) -> list[str]:
    # Leading/trailing spaces are part of some vectors, so only the newline is stripped.
    text = (VECTORS / name).read_text(encoding="utf-8")
    return [line for line in text.split("\n") if line.strip() and not line.startswith("#")]


def _cases(suffix: str) -> list[tuple[str, str]]:
    return [(kind, line) for kind in CHECKS for line in _lines(f"{kind}_syntax_{suffix}.txt")]


@pytest.mark.parametrize(("kind", "value"), _cases("valid"))
def test_valid_vectors(kind: str, value: str) -> None:
    assert CHECKS[kind](value), f"{kind} should accept {value!r}"


@pytest.mark.parametrize(("kind", "value"), _cases("invalid"))
def test_invalid_vectors(kind: str, value: str) -> None:
    assert not CHECKS[kind](value), f"{kind} should reject {value!r}"


@pytest.mark.parametrize("value", _lines("datetime_parse_invalid.txt"))
def test_datetime_semantically_invalid(value: str) -> None:
    assert not syntax.is_datetime(value)


def test_vector_files_are_not_empty() -> None:
    assert len(_cases("valid")) > 150
    assert len(_cases("invalid")) > 150


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("2024-02-29T12:00:00Z", True),
        ("2023-02-29T12:00:00Z", False),
        ("2000-02-29T12:00:00Z", True),
        ("1900-02-29T12:00:00Z", False),
        ("2024-01-01T00:00:60Z", False),
        ("2024-01-01T00:00:00+00:60", False),
        ("2024-01-01T00:00:00.123456789012345678901Z", False),  # 21 fraction digits
        ("0000-01-01T01:00:00+01:00", True),
        ("0000-01-01T00:59:00+01:00", False),
        ("2024-01-01T00:00:00Z\n", False),
    ],
)
def test_datetime_edges(value: str, ok: bool) -> None:
    assert syntax.is_datetime(value) is ok


def test_trailing_newline_is_rejected_everywhere() -> None:
    for value, check in [
        ("did:plc:abc\n", syntax.is_did),
        ("alice.test\n", syntax.is_handle),
        ("org.xmtp.inbox\n", syntax.is_nsid),
        ("3jzfcijpj2z2a\n", syntax.is_tid),
        ("self\n", syntax.is_record_key),
    ]:
        assert not check(value)


def test_did_length_limit() -> None:
    assert syntax.is_did("did:web:" + "a" * (2048 - 8))
    assert not syntax.is_did("did:web:" + "a" * (2049 - 8))


def test_normalize_handle() -> None:
    assert syntax.normalize_handle("Alice.Example.COM") == "alice.example.com"
    assert syntax.is_handle(syntax.normalize_handle("XX.LCS.MIT.EDU"))


def test_nsids_we_index() -> None:
    assert syntax.is_nsid("org.xmtp.inbox")
    assert syntax.is_nsid("at.didcomm.keyPackage")


@pytest.mark.parametrize("check", list(CHECKS.values()))
@given(value=st.one_of(st.text(max_size=300), st.none(), st.integers(), st.binary(max_size=20)))
def test_predicates_never_raise(check: object, value: object) -> None:
    assert callable(check)
    assert check(value) in (True, False)
