"""What a handler may answer besides a JSON body (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Blob"]


@dataclass(frozen=True, slots=True)
class Blob:
    """Bytes of a given content type (a CAR proof), with headers that describe them."""

    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
