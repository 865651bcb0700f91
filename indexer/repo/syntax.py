"""atproto string formats: did, handle, nsid, tid, record key, datetime, at-identifier.

Pure predicates that follow the atproto specs (and the atproto-interop-tests vectors).
They never raise: anything that is not a ``str`` is simply not valid.
"""

from __future__ import annotations

import re
from typing import Final, TypeGuard

# fullmatch everywhere: unlike `$`, it does not accept a trailing newline.
_DID_RE: Final = re.compile(r"did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]")
_HANDLE_RE: Final = re.compile(
    r"([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
)
# Domain authority (reversed, >= 2 segments, first starts with a letter) + name (letter, then alnum).
_NSID_RE: Final = re.compile(
    r"[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+"
    r"\.[a-zA-Z][a-zA-Z0-9]{0,62}"
)
_TID_RE: Final = re.compile(r"[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}")
_RKEY_RE: Final = re.compile(r"[a-zA-Z0-9_~.:-]{1,512}")
_DATETIME_RE: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]{1,20})?"
    r"(?:Z|([+-])([0-9]{2}):([0-9]{2}))"
)
_DAYS_IN_MONTH: Final = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

MAX_DID_LENGTH: Final = 2048
MAX_HANDLE_LENGTH: Final = 253
MAX_NSID_LENGTH: Final = 317
MAX_DATETIME_LENGTH: Final = 64


def is_did(value: object) -> TypeGuard[str]:
    """Generic DID syntax (any method), at most 2048 characters."""
    return isinstance(value, str) and len(value) <= MAX_DID_LENGTH and _DID_RE.fullmatch(value) is not None


def is_handle(value: object) -> TypeGuard[str]:
    """Handle syntax: DNS hostname of >= 2 labels, TLD not starting with a digit, <= 253 chars.

    Reserved TLDs (.local, .invalid, ...) are syntactically valid; whether they resolve is
    another layer's business.
    """
    return isinstance(value, str) and len(value) <= MAX_HANDLE_LENGTH and _HANDLE_RE.fullmatch(value) is not None


def normalize_handle(handle: str) -> str:
    """Handles are case-insensitive; atproto normalizes them to lowercase."""
    return handle.lower()


def is_nsid(value: object) -> TypeGuard[str]:
    """NSID syntax: reversed domain authority plus a name segment, <= 317 chars in all.

    Like the reference implementations (and the interop vectors), the authority is not
    separately capped at 253 chars.
    """
    return isinstance(value, str) and len(value) <= MAX_NSID_LENGTH and _NSID_RE.fullmatch(value) is not None


def is_tid(value: object) -> TypeGuard[str]:
    """TID: 13 chars of base32-sortable, top bit of the 64-bit value clear."""
    return isinstance(value, str) and len(value) == 13 and _TID_RE.fullmatch(value) is not None


def is_record_key(value: object) -> TypeGuard[str]:
    """Record key: 1-512 chars of [a-zA-Z0-9_~.:-], but not '.' or '..'."""
    return isinstance(value, str) and _RKEY_RE.fullmatch(value) is not None and value != "." and value != ".."


def is_datetime(value: object) -> TypeGuard[str]:
    """atproto datetime: the RFC 3339 / ISO 8601 intersection the Lexicon spec requires.

    Uppercase ``T`` and ``Z``, seconds required, timezone required, ``-00:00`` refused,
    fractional seconds optional (1-20 digits). Also checks the calendar (month 13, Feb 30,
    hour 25 and leap second 60 are refused, as JavaScript's Date and Go's time.Parse do) and
    that the instant is not before year 0.
    """
    if not isinstance(value, str) or len(value) > MAX_DATETIME_LENGTH:
        return False
    m = _DATETIME_RE.fullmatch(value)
    if m is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    if not (1 <= month <= 12 and hour <= 23 and minute <= 59 and second <= 59):
        return False
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not 1 <= day <= _DAYS_IN_MONTH[month - 1] + (1 if leap and month == 2 else 0):
        return False
    sign = m.group(7)
    if sign is None:
        return True
    off_h, off_m = int(m.group(8)), int(m.group(9))
    if off_h > 23 or off_m > 59 or (sign == "-" and off_h == 0 and off_m == 0):
        return False
    # A positive offset on the very first hours of year 0 would normalize to a negative year.
    if sign == "+" and year == 0 and month == 1 and day == 1:
        return hour * 60 + minute >= off_h * 60 + off_m
    return True


def is_at_identifier(value: object) -> TypeGuard[str]:
    """A DID or a handle (as used in at:// URIs and XRPC ``repo``/``actor`` parameters)."""
    if not isinstance(value, str):
        return False
    return is_did(value) if value.startswith("did:") else is_handle(value)
