"""indexer/records/envelope.py: the checks every record family shares."""

from __future__ import annotations

from typing import Any

import pytest

from atmx.indexer.records.envelope import RecordError, check_envelope

NSID = "org.example.thing"


def test_a_good_record_comes_back_as_is() -> None:
    record = {"$type": NSID, "a": 1, "b": 2}
    assert check_envelope(record, "self", NSID, ("a", "b")) is record
    assert check_envelope({"a": 1}, "self", NSID, ("a",)) == {"a": 1}  # $type may be left out


@pytest.mark.parametrize(
    ("record", "rkey", "reason"),
    [
        ({"a": 1}, "other", "bad_rkey"),
        ([1, 2], "self", "bad_type"),
        ("text", "self", "bad_type"),
        ({"$type": "org.example.other", "a": 1}, "self", "bad_type"),
        ({"$type": NSID}, "self", "missing_field"),
    ],
)
def test_refusals_name_their_reason(record: Any, rkey: str, reason: str) -> None:
    with pytest.raises(RecordError) as e:
        check_envelope(record, rkey, NSID, ("a",))
    assert e.value.reason == reason
    assert isinstance(e.value, ValueError)


def test_many_record_families_take_any_record_key() -> None:
    assert check_envelope({"a": 1}, "3kaaa", NSID, ("a",), single=False) == {"a": 1}


def test_a_dict_subclass_is_not_a_record() -> None:
    class Sneaky(dict[str, Any]):
        pass

    with pytest.raises(RecordError):
        check_envelope(Sneaky(a=1), "self", NSID, ("a",))
