"""atproto data-model values several families' lexicons use: `bytes`, the `uri` string format and
string lengths as lexicons count them (pure).

Records reach the validators in atproto JSON form (cbrrr's atjson mode, indexer/repo/verify.py):
a CBOR byte string becomes `{"$bytes": "<unpadded standard base64>"}`, and a CBOR map that itself
has a `$bytes` key is refused as DAG-CBOR before any validator runs. So a one-key `$bytes` object
is exactly a bytes value; anything else in its place is not.
"""

from __future__ import annotations

import binascii
import re
from base64 import b64decode, b64encode
from typing import Final

from atmx.indexer.records.envelope import RecordError

__all__ = ["as_bytes", "bytes_json", "is_uri", "utf8_length"]

_BASE64_RE: Final = re.compile(r"[A-Za-z0-9+/]*")
# The reference lexicon validator's `uri` rule (a scheme, then no whitespace; `scheme:/x` is not
# allowed to start its rest with a slash unless it is `//`), with the scheme held to RFC 3986.
_URI_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(?://)?[^\s/][^\s]*")
MAX_URI_BYTES: Final = 8192  # the atproto `uri` format's own ceiling


def as_bytes(value: object, reason: str, what: str) -> bytes:
    """The bytes of an atproto `bytes` value, or RecordError(reason) naming `what`."""
    if type(value) is not dict or len(value) != 1 or type(encoded := value.get("$bytes")) is not str:
        raise RecordError(reason, f"{what} is not bytes")
    if _BASE64_RE.fullmatch(encoded) is None or len(encoded) % 4 == 1:
        raise RecordError(reason, f"{what} is not base64")
    try:
        raw = b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:  # unreachable after the checks above, kept as a guard
        raise RecordError(reason, f"{what} is not base64") from None
    # non-zero padding bits would let two strings stand for the same bytes
    if b64encode(raw).decode("ascii").rstrip("=") != encoded:
        raise RecordError(reason, f"{what} is not canonical base64")
    return raw


def bytes_json(raw: bytes) -> dict[str, str]:
    """`raw` in atproto JSON form, as the API shows bytes."""
    return {"$bytes": b64encode(raw).decode("ascii").rstrip("=")}


def utf8_length(value: str) -> int | None:
    """Length in UTF-8 bytes, as lexicon string limits count it; None for a string that is not
    valid Unicode (lone surrogates cannot come from CBOR, but can from callers)."""
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def is_uri(value: object) -> bool:
    if type(value) is not str or not value.isascii() or len(value) > MAX_URI_BYTES:
        return False
    return _URI_RE.fullmatch(value) is not None
