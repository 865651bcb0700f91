"""indexer/records/limits.py: depth and U+0000 limits on decoded records, walked without recursion."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from atmx.indexer.records.limits import MAX_DEPTH, scan, without_nul


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return value


def test_depth_limit() -> None:
    assert scan(nested(MAX_DEPTH)) is None
    assert scan(nested(MAX_DEPTH + 1)) == "too_deep"
    assert scan(nested(100_000)) == "too_deep"  # far beyond the Python stack


def test_nul_anywhere() -> None:
    assert scan({"a": "x\x00"}) == "nul_character"
    assert scan({"a\x00": 1}) == "nul_character"
    assert scan([["\x00"]]) == "nul_character"
    assert scan("\x00") == "nul_character"
    assert scan({"a": ["x", {"b": "y"}]}) is None


def test_depth_wins_over_nul() -> None:
    assert scan({"a": "\x00", "b": nested(MAX_DEPTH)}) == "too_deep"


def test_without_nul_replaces_in_keys_and_strings_and_copies() -> None:
    record = {"a\x00": ["x\x00y", {"b": "\x00"}], "n": 1, "t": True, "z": None}
    cleaned = without_nul(record)
    assert cleaned == {"a\ufffd": ["x\ufffdy", {"b": "\ufffd"}], "n": 1, "t": True, "z": None}
    assert record["a\x00"][0] == "x\x00y"  # the original is untouched


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=15,
)


@given(_json)
def test_without_nul_leaves_records_without_nul_equal(record: Any) -> None:
    if scan(record) is None:
        assert without_nul(record) == record
    assert scan(without_nul(record)) in (None, "too_deep")
