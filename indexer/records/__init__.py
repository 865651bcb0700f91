"""Validators for the record kinds atmx indexes, one module per kind."""

from __future__ import annotations

from typing import Any


class RecordError(ValueError):
    """A record that does not satisfy its lexicon (or the stricter rules atmx applies).

    Shared by every validator in this package so callers can catch one type; ``reason``
    is a short snake_case label such as ``missing_field`` or ``bad_created_at``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


__all__ = ["RecordError", "check_envelope"]


def check_envelope(record: object, rkey: str, nsid: str, required: tuple[str, ...]) -> dict[str, Any]:
    """The checks every record kind shares: rkey `self`, an object of `$type` nsid, required fields."""
    if rkey != "self":
        raise RecordError("bad_rkey", f"{nsid} record key must be 'self', not {str(rkey)[:64]!r}")
    if type(record) is not dict:
        raise RecordError("bad_type", "record is not an object")
    if record.get("$type", nsid) != nsid:
        raise RecordError("bad_type", f"$type is not {nsid}")
    for field in required:
        if field not in record:
            raise RecordError("missing_field", f"{nsid} record lacks {field}")
    return record
