"""indexer/records/stored.py: the stored binding's helpers for views."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from stored_samples import binding

from atmx.indexer.records.stored import StoredBinding, iso_time, text_field


def test_iso_time_is_utc_with_milliseconds_and_z() -> None:
    assert iso_time(datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=UTC)) == "2026-11-01T12:00:00.123Z"
    plus_two = timezone(timedelta(hours=2))
    assert iso_time(datetime(2026, 11, 1, 14, 0, tzinfo=plus_two)) == "2026-11-01T12:00:00.000Z"


def test_text_field_reads_strings_of_possibly_malformed_records() -> None:
    assert text_field({"label": "phone"}, "label") == "phone"
    assert text_field({"label": 3}, "label") is None
    assert text_field({}, "label") is None
    assert text_field(["label"], "label") is None
    assert text_field(None, "label") is None


def test_a_stored_binding_has_no_handle_unless_given() -> None:
    stored = binding()
    assert isinstance(stored, StoredBinding) and stored.handle is None
