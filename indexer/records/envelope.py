"""The checks every record family shares, and the error all validators raise (pure)."""

from __future__ import annotations

from typing import Any

__all__ = ["RecordError", "check_envelope"]


class RecordError(ValueError):
    """A record that does not satisfy its lexicon (or the stricter rules atmx applies).

    ``reason`` is a short snake_case label such as ``missing_field`` or ``bad_created_at``;
    it becomes a metric label and the binding's stored reason.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_envelope(
    record: object, rkey: str, nsid: str, required: tuple[str, ...], *, single: bool = True
) -> dict[str, Any]:
    """An object of `$type` nsid with the required fields; rkey `self` for single-record families."""
    if single and rkey != "self":
        raise RecordError("bad_rkey", f"{nsid} record key must be 'self', not {str(rkey)[:64]!r}")
    if type(record) is not dict:
        raise RecordError("bad_type", "record is not an object")
    if record.get("$type", nsid) != nsid:
        raise RecordError("bad_type", f"$type is not {nsid}")
    for field in required:
        if field not in record:
            raise RecordError("missing_field", f"{nsid} record lacks {field}")
    return record
