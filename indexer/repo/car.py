"""CARv1 reader that keeps raw block bytes and checks every block against its CID.

Only the CID form atproto uses is accepted: CIDv1, dag-cbor (0x71) or raw (0x55),
sha2-256 with a 32-byte digest. The SHA-256 check is what makes a CAR trustworthy:
libipld's reader skips it and hides the raw bytes, so it can't be used to verify.

`VerificationError` lives here because this is the bottom of the verification stack;
`verify.py` re-exports it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cbrrr import CID, decode_dag_cbor, encode_dag_cbor

__all__ = [
    "DEFAULT_MAX_BLOCKS",
    "DEFAULT_MAX_BLOCK_SIZE",
    "Car",
    "CarError",
    "VerificationError",
    "read_car",
    "write_car",
]

DEFAULT_MAX_BLOCKS = 100_000
# A record may be up to 1 MiB; leave room so that an oversized record is reported as
# `record_too_large` by the record check rather than as a malformed CAR.
DEFAULT_MAX_BLOCK_SIZE = 4 * 1024 * 1024
_MAX_HEADER_SIZE = 64 * 1024
_MAX_VARINT = 1 << 31

_DAG_CBOR_PREFIX = b"\x01\x71\x12\x20"
_RAW_PREFIX = b"\x01\x55\x12\x20"
_CID_LEN = 36


class VerificationError(ValueError):
    """Base of every rejection raised by the pure verification core."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class CarError(VerificationError):
    """The CAR is malformed (`bad_car`) or a block doesn't hash to its CID (`hash_mismatch`)."""


@dataclass(frozen=True, slots=True)
class Car:
    roots: list[CID]
    blocks: dict[CID, bytes]


def _varint(data: bytes, off: int) -> tuple[int, int]:
    """Decode an unsigned LEB128 varint at `off`; returns (value, new offset)."""
    end = len(data)
    if off < end and data[off] < 0x80:  # fast path: one byte
        return data[off], off + 1
    value = 0
    shift = 0
    while True:
        if off >= end:
            raise CarError("bad_car", "truncated varint")
        b = data[off]
        off += 1
        value |= (b & 0x7F) << shift
        if value > _MAX_VARINT:
            raise CarError("bad_car", "varint too large")
        if not b & 0x80:
            return value, off
        shift += 7


def _read_header(data: bytes) -> tuple[list[CID], int]:
    hlen, off = _varint(data, 0)
    if hlen == 0 or hlen > _MAX_HEADER_SIZE or off + hlen > len(data):
        raise CarError("bad_car", "bad header length")
    try:
        header = decode_dag_cbor(data[off : off + hlen])
    except Exception as e:  # cbrrr raises several exception types for malformed input
        raise CarError("bad_car", f"header is not DAG-CBOR: {e}") from None
    if not isinstance(header, dict):
        raise CarError("bad_car", "header is not a map")
    version = header.get("version")
    if type(version) is not int or version != 1:
        raise CarError("bad_car", f"unsupported CAR version {version!r}")
    roots = header.get("roots")
    if not isinstance(roots, list):
        raise CarError("bad_car", "header roots must be a list")
    cids = [r for r in roots if isinstance(r, CID)]
    if not cids or len(cids) != len(roots):
        raise CarError("bad_car", "header roots must be a non-empty list of CIDs")
    return cids, off + hlen


def read_car(data: bytes, *, max_blocks: int = DEFAULT_MAX_BLOCKS, max_block_size: int = DEFAULT_MAX_BLOCK_SIZE) -> Car:
    """Parse a CARv1 file, verifying the SHA-256 of every block.

    Duplicate blocks and extra roots are tolerated (the spec allows both).
    Raises `CarError` with reason `bad_car` or `hash_mismatch`.
    """
    roots, off = _read_header(data)
    blocks: dict[CID, bytes] = {}
    end = len(data)
    count = 0
    sha256 = hashlib.sha256
    while off < end:
        slen, off = _varint(data, off)
        section_end = off + slen
        if section_end > end:
            raise CarError("bad_car", "truncated section")
        if slen < _CID_LEN:
            raise CarError("bad_car", "section shorter than a CID")
        if slen - _CID_LEN > max_block_size:
            raise CarError("bad_car", f"block larger than {max_block_size} bytes")
        count += 1
        if count > max_blocks:
            raise CarError("bad_car", f"more than {max_blocks} blocks")
        prefix = data[off : off + 4]
        if prefix != _DAG_CBOR_PREFIX and prefix != _RAW_PREFIX:
            raise CarError("bad_car", "unsupported CID (need CIDv1 dag-cbor/raw sha2-256)")
        cid_end = off + _CID_LEN
        block = data[cid_end:section_end]
        if sha256(block).digest() != data[off + 4 : cid_end]:
            raise CarError("hash_mismatch", f"block {CID(data[off:cid_end]).encode()} does not match its CID")
        blocks[CID(data[off:cid_end])] = block
        off = section_end
    return Car(roots=roots, blocks=blocks)


def _write_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def write_car(root: CID, blocks: Iterable[tuple[CID, bytes]]) -> bytes:
    """A CARv1 file with one root and the given blocks, each once, in the order given."""
    header = encode_dag_cbor({"version": 1, "roots": [root]})
    out = [_write_varint(len(header)), header]
    seen: set[bytes] = set()
    for cid, block in blocks:
        raw = bytes(cid)
        if raw in seen:
            continue
        seen.add(raw)
        out.append(_write_varint(len(raw) + len(block)))
        out.append(raw)
        out.append(block)
    return b"".join(out)
