"""Validators for the record kinds atmx indexes, one module per kind."""

from __future__ import annotations


class RecordError(ValueError):
    """A record that does not satisfy its lexicon (or the stricter rules atmx applies).

    Shared by every validator in this package so callers can catch one type; ``reason``
    is a short snake_case label such as ``missing_field`` or ``bad_created_at``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


__all__ = ["RecordError"]
