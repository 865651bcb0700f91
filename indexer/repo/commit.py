"""The signed repo commit (format version 3): decode, canonical unsigned bytes, signature check.

The signature covers the DAG-CBOR encoding of the commit map without `sig`. It is
re-encoded from the decoded map (not from our fields), so a field we don't know about
stays covered; cbrrr is strict, so a decoded block re-encodes to the same canonical bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cbrrr import CID, DagCborTypes, decode_dag_cbor, encode_dag_cbor

from atmx.indexer.repo.car import VerificationError
from atmx.indexer.repo.crypto import PublicKey

__all__ = [
    "FUTURE_REV_TOLERANCE",
    "Commit",
    "CommitError",
    "check_rev_not_future",
    "decode_commit",
    "tid_timestamp_us",
    "verify_commit_signature",
]

FUTURE_REV_TOLERANCE = timedelta(minutes=5)  # same as indigo's futureRevTolerance

_TID_RE = re.compile(r"[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}")
_B32_SORTABLE = {c: i for i, c in enumerate("234567abcdefghijklmnopqrstuvwxyz")}


class CommitError(VerificationError):
    """Reasons: `bad_commit`, `bad_signature`, `future_rev`."""


@dataclass(frozen=True, slots=True)
class Commit:
    did: str
    version: int
    data: CID
    rev: str
    prev: CID | None
    sig: bytes
    _unsigned: dict[str, DagCborTypes] = field(repr=False, compare=False)

    def unsigned_bytes(self) -> bytes:
        """Canonical DAG-CBOR of the commit map minus `sig` (with `prev: null` kept): what was signed."""
        return encode_dag_cbor(self._unsigned)


def tid_timestamp_us(tid: str) -> int:
    """Microseconds since the Unix epoch encoded in a TID (top 53 bits after the sign bit)."""
    n = 0
    for c in tid:
        n = (n << 5) | _B32_SORTABLE[c]
    return n >> 10


def decode_commit(block: bytes) -> Commit:
    try:
        obj = decode_dag_cbor(block)
    except Exception as e:  # cbrrr raises several exception types for malformed input
        raise CommitError("bad_commit", f"commit block is not DAG-CBOR: {e}") from None
    if not isinstance(obj, dict):
        raise CommitError("bad_commit", "commit is not a map")
    did, version, data, rev, sig = (obj.get(k) for k in ("did", "version", "data", "rev", "sig"))
    if not isinstance(did, str) or not did.startswith("did:"):
        raise CommitError("bad_commit", "commit did is missing or not a DID")
    if type(version) is not int or version != 3:
        raise CommitError("bad_commit", f"unsupported commit version {version!r}")
    if not isinstance(data, CID):
        raise CommitError("bad_commit", "commit data is not a CID")
    if not isinstance(rev, str) or not _TID_RE.fullmatch(rev):
        raise CommitError("bad_commit", f"commit rev {rev!r} is not a TID")
    if "prev" not in obj:  # omitting the key changes the signed bytes, so it must be there
        raise CommitError("bad_commit", "commit has no prev key")
    prev = obj["prev"]
    if prev is not None and not isinstance(prev, CID):
        raise CommitError("bad_commit", "commit prev is neither null nor a CID")
    if not isinstance(sig, bytes):
        raise CommitError("bad_commit", "commit sig is missing or not bytes")
    unsigned = {k: v for k, v in obj.items() if k != "sig"}
    return Commit(did=did, version=version, data=data, rev=rev, prev=prev, sig=sig, _unsigned=unsigned)


def check_rev_not_future(rev: str, now: datetime) -> None:
    """Reject a rev dated more than FUTURE_REV_TOLERANCE after `now` (an aware datetime)."""
    limit_us = int((now + FUTURE_REV_TOLERANCE).timestamp() * 1_000_000)
    if tid_timestamp_us(rev) > limit_us:
        raise CommitError("future_rev", f"rev {rev} is dated in the future")


def verify_commit_signature(commit: Commit, key: PublicKey) -> None:
    if not key.verify(commit.unsigned_bytes(), commit.sig):
        raise CommitError("bad_signature", f"commit signature does not verify with {key.did_key}")
