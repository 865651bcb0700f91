"""Whole-message verification: `#commit` (Sync 1.1), `#sync`, and getRecord proof CARs.

Records come back in atproto JSON form, decoded straight from DAG-CBOR by cbrrr's
atjson mode: CID links as `{"$link": "bafy..."}`, bytes as `{"$bytes": "<base64>"}`
(blob refs therefore look exactly as in the XRPC JSON API). Nothing else in the
record is changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from cbrrr import CID, decode_dag_cbor
from libipld import encode_cid

from atmx.indexer.repo.car import Car, CarError, VerificationError, read_car, write_car
from atmx.indexer.repo.commit import Commit, CommitError, check_rev_not_future, decode_commit, verify_commit_signature
from atmx.indexer.repo.crypto import PublicKey
from atmx.indexer.repo.mst import MstError, MstOp, MstView, normalize_ops

__all__ = [
    "MAX_COMMIT_BLOCKS",
    "MAX_RECORD_SIZE",
    "CarError",
    "CommitError",
    "MstError",
    "OpLike",
    "RecordProof",
    "VerificationError",
    "VerifiedCommit",
    "decode_record",
    "prove_path",
    "verify_commit_message",
    "verify_record_proof",
    "verify_sync_message",
]

MAX_RECORD_SIZE = 1024 * 1024
# A #commit CAR is at most 2 MB and holds <= 200 ops; this only stops absurd inputs early.
MAX_COMMIT_BLOCKS = 10_000
_DAG_CBOR_CID_PREFIX = b"\x01\x71\x12\x20"


class OpLike(Protocol):
    """A `#repoOp` as decoded by libipld (CIDs as 36 raw bytes) or with cbrrr CIDs."""

    @property
    def action(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def cid(self) -> bytes | CID | None: ...
    @property
    def prev(self) -> bytes | CID | None: ...


@dataclass(frozen=True, slots=True)
class VerifiedCommit:
    did: str
    rev: str
    commit_cid: str
    data_cid: str
    prev_data: str | None
    # path -> (record CID, the record's block when the diff carries it), for create and update ops;
    # blocks are decoded only by whoever needs the record (decode_record)
    writes: dict[str, tuple[str, bytes | None]]
    deletes: tuple[str, ...]
    root: CID = field(repr=False, compare=False)  # the commit block's CID
    data: CID = field(repr=False, compare=False)  # the signed MST root
    blocks: Mapping[CID, bytes] = field(repr=False, compare=False, default_factory=dict)

    def proof(self, path: str) -> bytes:
        """The proof of the record at `path` as a CAR, in the shape `com.atproto.sync.getRecord`
        returns: the signed commit (the root), the MST nodes on the path, the record block."""
        return prove_path(self.root, self.data, self.blocks, path)


@dataclass(frozen=True, slots=True)
class RecordProof:
    did: str
    rev: str
    commit_cid: str
    data_cid: str
    cid: str | None  # None: the MST proves the record does not exist
    block: bytes | None  # the record block (undecoded); None when absent
    car: bytes = field(repr=False, compare=False, default=b"")  # the proof as received


def _as_cid(value: bytes | CID, what: str, reason: str) -> CID:
    if isinstance(value, CID):
        return value
    if isinstance(value, bytes | bytearray) and len(value) == 37 and value[0] == 0:
        value = bytes(value[1:])  # tolerate the identity-multibase (0x00) form
    if not isinstance(value, bytes | bytearray) or len(value) != 36:
        raise VerificationError(reason, f"{what} is not a 36-byte CID")
    return CID(bytes(value))


def cid_text(cid: CID) -> str:
    """The base32 `bafy...` form. cbrrr's CID.encode() is pure-Python base32 (~5 µs); libipld's ~0.2 µs."""
    text: str = encode_cid(bytes(cid))
    return text


def decode_record(block: bytes) -> dict[str, Any]:
    """Decode a record block into atproto JSON form; `record_too_large` / `bad_record`."""
    if len(block) > MAX_RECORD_SIZE:
        raise VerificationError("record_too_large", f"record is {len(block)} bytes (max {MAX_RECORD_SIZE})")
    try:
        record = decode_dag_cbor(block, atjson_mode=True)
    except Exception as e:  # cbrrr raises several exception types for malformed input
        raise VerificationError("bad_record", f"record is not DAG-CBOR: {e}") from None
    if not isinstance(record, dict):
        raise VerificationError("bad_record", "record is not a map")
    return record


def prove_path(root: CID, data: CID, blocks: Mapping[CID, bytes], path: str) -> bytes:
    """A getRecord-shaped CAR for `path` under the commit `root` whose MST root is `data`.
    Raises MstError(`missing_block`) when `blocks` lacks a node or the record."""
    visited: list[CID] = []
    value = MstView(blocks).lookup(data, path, visited)
    commit_block = blocks.get(root)
    if commit_block is None:
        raise MstError("missing_block", "commit block is not in the CAR")
    parts = [(root, commit_block)] + [(cid, blocks[cid]) for cid in visited]
    if value is not None:
        record = blocks.get(value)
        if record is None:
            raise MstError("missing_block", f"record block for {path} is not in the CAR")
        parts.append((value, record))
    return write_car(root, parts)


def _signed_commit(car: Car, commit_cid: CID, *, did: str, rev: str | None, key: PublicKey, now: datetime) -> Commit:
    block = car.blocks.get(commit_cid)
    if block is None:
        raise VerificationError("missing_block", "commit block is not in the CAR")
    commit = decode_commit(block)
    if commit.did != did:
        raise CommitError("did_mismatch", f"commit is for {commit.did}, event is for {did}")
    if rev is not None and commit.rev != rev:
        raise CommitError("rev_mismatch", f"commit rev {commit.rev} is not the event rev {rev}")
    check_rev_not_future(commit.rev, now)
    verify_commit_signature(commit, key)
    return commit


def _root(car: Car, expected: CID | None) -> CID:
    root = car.roots[0]
    if expected is not None and root != expected:
        raise CarError("root_mismatch", f"CAR root {root.encode()} is not the commit {expected.encode()}")
    return root


def verify_commit_message(
    *,
    did: str,
    rev: str,
    commit_cid: bytes | CID,
    blocks: bytes,
    ops: Sequence[OpLike],
    prev_data: bytes | CID | None,
    key: PublicKey,
    now: datetime,
) -> VerifiedCommit:
    """Fully verify a `#commit`: CAR hashes, signature, per-op MST proofs, inversion to prevData.

    `prev_data=None` (legacy commit or first commit) skips only the inversion check.
    `now` must be timezone-aware. Raises a `VerificationError` subclass.
    """
    car = read_car(blocks, max_blocks=MAX_COMMIT_BLOCKS)
    expected = _as_cid(commit_cid, "commit", "bad_commit")
    root = _root(car, expected)
    commit = _signed_commit(car, root, did=did, rev=rev, key=key, now=now)

    mst_ops = [
        MstOp(
            action=op.action,  # type: ignore[arg-type]  # normalize_ops rejects unknown actions
            path=op.path,
            cid=None if op.cid is None else _as_cid(op.cid, "op cid", "bad_ops"),
            prev=None if op.prev is None else _as_cid(op.prev, "op prev", "bad_ops"),
        )
        for op in ops
    ]
    normalize_ops(mst_ops)  # shape and duplicate checks before touching the tree
    view = MstView(car.blocks)
    prev_data_cid = None if prev_data is None else _as_cid(prev_data, "prevData", "bad_commit")
    if prev_data_cid is not None:
        # inversion looks up every op in the signed tree (created/updated keys must hold op.cid,
        # deleted keys must be absent) and proves that the ops are the whole change since prevData
        if view.invert(commit.data, mst_ops) != prev_data_cid:
            raise MstError("ops_do_not_invert", "inverting the ops does not give prevData")
    else:
        for op in mst_ops:  # without prevData, each op is still proven against the signed tree
            value = view.lookup(commit.data, op.path)
            if op.cid is None and value is not None:
                raise MstError("not_deleted", f"deleted record {op.path} is still in the tree")
            if op.cid is not None and value != op.cid:
                raise MstError("cid_mismatch", f"op cid for {op.path} is not the value in the tree")
    writes: dict[str, tuple[str, bytes | None]] = {}
    deletes: list[str] = []
    for op in mst_ops:
        if op.cid is None:
            deletes.append(op.path)
        else:
            writes[op.path] = (cid_text(op.cid), car.blocks.get(op.cid))

    return VerifiedCommit(
        did=did,
        rev=rev,
        commit_cid=cid_text(root),
        data_cid=cid_text(commit.data),
        prev_data=None if prev_data_cid is None else cid_text(prev_data_cid),
        writes=writes,
        deletes=tuple(deletes),
        root=root,
        data=commit.data,
        blocks=car.blocks,
    )


def verify_sync_message(*, did: str, rev: str, blocks: bytes, key: PublicKey, now: datetime) -> VerifiedCommit:
    """Verify a `#sync`: the CAR's root is the signed commit; check did, rev and signature."""
    car = read_car(blocks, max_blocks=MAX_COMMIT_BLOCKS)
    root = _root(car, None)
    commit = _signed_commit(car, root, did=did, rev=rev, key=key, now=now)
    return VerifiedCommit(
        did=did,
        rev=rev,
        commit_cid=cid_text(root),
        data_cid=cid_text(commit.data),
        prev_data=None,
        writes={},
        deletes=(),
        root=root,
        data=commit.data,
        blocks=car.blocks,
    )


def verify_record_proof(
    *, did: str, collection: str, rkey: str, car: bytes, key: PublicKey, now: datetime
) -> RecordProof:
    """Verify a `com.atproto.sync.getRecord` CAR: signed commit, MST path, and the record or its absence."""
    parsed = read_car(car, max_blocks=MAX_COMMIT_BLOCKS)
    root = _root(parsed, None)
    commit = _signed_commit(parsed, root, did=did, rev=None, key=key, now=now)
    path = f"{collection}/{rkey}"
    value = MstView(parsed.blocks).lookup(commit.data, path)
    block = None
    if value is not None:
        block = parsed.blocks.get(value)
        if block is None:
            raise VerificationError("missing_block", f"record block for {path} is not in the CAR")
    return RecordProof(
        did=did,
        rev=commit.rev,
        commit_cid=cid_text(root),
        data_cid=cid_text(commit.data),
        cid=None if value is None else cid_text(value),
        block=block,
        car=car,
    )
