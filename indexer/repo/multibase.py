"""Base58btc (Bitcoin alphabet), the ``z`` multibase used by did:key, Multikey and did:peer."""

from __future__ import annotations

from typing import Final

ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX: Final = {c: i for i, c in enumerate(ALPHABET)}


class Base58Error(ValueError):
    reason = "bad_base58"


def b58encode(data: bytes) -> str:
    # Each leading zero byte is written as one leading '1'.
    zeros = len(data) - len(data.lstrip(b"\0"))
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(ALPHABET[r])
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    """Decode base58btc; raises Base58Error on any character outside the alphabet."""
    n = 0
    index = _INDEX
    try:
        for c in text:
            n = n * 58 + index[c]
    except KeyError:
        raise Base58Error(f"not base58btc: {text[:64]!r}") from None
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body


def decode_multibase_z(text: str) -> bytes:
    """Decode a ``z``-prefixed (base58btc) multibase string."""
    if not text.startswith("z"):
        raise Base58Error(f"not a base58btc multibase string: {text[:64]!r}")
    return b58decode(text[1:])
