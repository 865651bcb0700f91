"""Limits on decoded records, checked before anything else looks inside them (pure).

The atproto data model leaves nesting depth to implementations. Real records of every family
atmx indexes nest three or four levels; a record nested deeper than MAX_DEPTH is refused as
`too_deep`, so no later step (validation, JSON encoding, PostgreSQL) walks a hostile depth.
PostgreSQL text cannot hold U+0000, so a record carrying it anywhere (keys included) is
`nul_character`. Every walk here is iterative: a record can never exhaust the Python stack.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["MAX_DEPTH", "scan", "without_nul"]

MAX_DEPTH: Final = 32  # levels of maps and arrays, the record itself being level 1


def scan(record: object) -> str | None:
    """`too_deep`, `nul_character`, or None for a record within the limits. Depth wins."""
    nul = False
    stack: list[tuple[object, int]] = [(record, 1)]
    while stack:
        value, depth = stack.pop()
        if type(value) is dict:
            if depth > MAX_DEPTH:
                return "too_deep"
            for key, item in value.items():
                if "\x00" in key:
                    nul = True
                if type(item) is dict or type(item) is list:
                    stack.append((item, depth + 1))
                elif type(item) is str and "\x00" in item:
                    nul = True
        elif type(value) is list:
            if depth > MAX_DEPTH:
                return "too_deep"
            for item in value:
                if type(item) is dict or type(item) is list:
                    stack.append((item, depth + 1))
                elif type(item) is str and "\x00" in item:
                    nul = True
        elif type(value) is str and "\x00" in value:
            nul = True
    return "nul_character" if nul else None


def without_nul(record: Any) -> Any:
    """A copy with every U+0000 replaced by U+FFFD, in keys and strings; for records `scan` passed
    (or found only NULs in), so the depth is bounded."""

    def clean(value: Any) -> Any:
        return value.replace("\x00", "\ufffd") if type(value) is str else value

    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(record, root, 0)]  # (source, parent container, key in it)
    while stack:
        value, parent, slot = stack.pop()
        if type(value) is dict:
            copy: dict[str, Any] = {}
            for key, item in value.items():
                copy[clean(key)] = None
                stack.append((item, copy, clean(key)))
            parent[slot] = copy
        elif type(value) is list:
            items: list[Any] = [None] * len(value)
            for i, item in enumerate(value):
                stack.append((item, items, i))
            parent[slot] = items
        else:
            parent[slot] = clean(value)
    return root[0]
