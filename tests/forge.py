"""Build real, signed atproto repos and firehose messages for tests (and forgeries of them).

    key = SigningKey.generate("k256")
    repo = RepoBuilder("did:plc:alice", key)
    msg = repo.put("org.xmtp.inbox/self", {"$type": "org.xmtp.inbox", "id": "..."})
    verify_commit_message(**msg.verify_kwargs(), key=key.public_key, now=now)
    msg2 = repo.commit({"a.b/1": {...}, "a.b/2": None})   # several ops in one commit; None deletes
    frame = msg2.to_frame(seq=7)                          # websocket message bytes (header + body)

Records are given in atproto JSON form (`{"$link": ...}`, `{"$bytes": ...}` allowed) or as raw
block bytes (to forge malformed records). Every message carries the diff a PDS would send:
the commit, new MST nodes, the nodes on each op's path in the old and new trees (what
inversion needs), and the created/updated record blocks.

Forgery helpers (`rewrite_commit`, `high_s`, `replace_block`, `drop_block`) return new
messages/CARs; the builder's own state is never changed by them.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import coincurve
from atmst.blockstore import MemoryBlockStore
from atmst.mst.diff import mst_diff
from atmst.mst.node_store import NodeStore
from atmst.mst.node_walker import NodeWalker
from atmst.mst.node_wrangler import NodeWrangler
from atmst.mst.proof import find_rpath_and_build_proof
from cbrrr import CID, DagCborTypes, decode_dag_cbor, encode_dag_cbor
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from atmx.indexer.repo.car import read_car
from atmx.indexer.repo.crypto import PublicKey, parse_did_key
from atmx.indexer.repo.crypto import format_did_key as _format_did_key

Curve = Literal["k256", "p256"]
RecordValue = Mapping[str, Any] | bytes

_ORDER = {
    "k256": 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
    "p256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
}
_B32_SORTABLE = "234567abcdefghijklmnopqrstuvwxyz"


class SigningKey:
    """A private key on either atproto curve; `sign` returns 64-byte low-S r||s."""

    def __init__(self, curve: Curve, secret: bytes) -> None:
        self.curve: Curve = curve
        self.secret = secret
        if curve == "k256":
            self._k256 = coincurve.PrivateKey(secret)
            sec1 = self._k256.public_key.format(compressed=True)
        else:
            self._p256 = ec.derive_private_key(int.from_bytes(secret, "big"), ec.SECP256R1())
            sec1 = self._p256.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
        self.did_key = _format_did_key(curve, sec1)
        self.public_key: PublicKey = parse_did_key(self.did_key)

    @classmethod
    def generate(cls, curve: Curve = "k256") -> SigningKey:
        if curve == "k256":
            return cls(curve, coincurve.PrivateKey().secret)
        value = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value
        return cls(curve, value.to_bytes(32, "big"))

    def sign(self, message: bytes) -> bytes:
        if self.curve == "k256":
            return self._k256.sign_recoverable(message)[:64]  # libsecp256k1 always signs low-S
        r, s = decode_dss_signature(self._p256.sign(message, ec.ECDSA(hashes.SHA256())))
        if s > _ORDER["p256"] // 2:
            s = _ORDER["p256"] - s
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def high_s(sig: bytes, curve: Curve) -> bytes:
    """The other valid-for-ECDSA encoding of a signature (s -> n - s), which atproto forbids."""
    s = int.from_bytes(sig[32:], "big")
    return sig[:32] + (_ORDER[curve] - s).to_bytes(32, "big")


def make_tid(when: datetime, clock_id: int = 0) -> str:
    n = (int(when.timestamp() * 1_000_000) << 10) | (clock_id & 0x3FF)
    return "".join(_B32_SORTABLE[(n >> (5 * i)) & 31] for i in range(12, -1, -1))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def write_car(roots: list[CID], blocks: Iterable[tuple[CID, bytes]]) -> bytes:
    header = encode_dag_cbor({"version": 1, "roots": list(roots)})
    parts = [_varint(len(header)), header]
    for cid, data in blocks:
        raw = bytes(cid)
        parts += [_varint(len(raw) + len(data)), raw, data]
    return b"".join(parts)


def replace_block(car: bytes, cid: CID, data: bytes) -> bytes:
    """Same CAR with `cid`'s bytes swapped for `data` (which won't hash to `cid`)."""
    parsed = read_car(car)
    blocks = dict(parsed.blocks)
    blocks[cid] = data
    return write_car(parsed.roots, blocks.items())


def drop_block(car: bytes, cid: CID) -> bytes:
    parsed = read_car(car)
    return write_car(parsed.roots, ((c, b) for c, b in parsed.blocks.items() if c != cid))


@dataclass(frozen=True)
class RepoOp:
    """A `#repoOp` the way libipld decodes it: CIDs as 36 raw bytes."""

    action: str
    path: str
    cid: bytes | None
    prev: bytes | None


@dataclass(frozen=True)
class CommitMessage:
    """The fields of a `#commit` event (CIDs as raw bytes, as libipld gives them)."""

    repo: str
    rev: str
    since: str | None
    commit: bytes
    blocks: bytes
    ops: tuple[RepoOp, ...]
    prev_data: bytes | None
    time: str

    def verify_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `verify_commit_message` (add `key` and `now`)."""
        return {
            "did": self.repo,
            "rev": self.rev,
            "commit_cid": self.commit,
            "blocks": self.blocks,
            "ops": self.ops,
            "prev_data": self.prev_data,
        }

    def body(self, seq: int) -> dict[str, DagCborTypes]:
        ops: list[DagCborTypes] = []
        for op in self.ops:
            entry: dict[str, DagCborTypes] = {
                "action": op.action,
                "path": op.path,
                "cid": None if op.cid is None else CID(op.cid),
            }
            if op.prev is not None:
                entry["prev"] = CID(op.prev)
            ops.append(entry)
        body: dict[str, DagCborTypes] = {
            "seq": seq,
            "rebase": False,
            "tooBig": False,
            "repo": self.repo,
            "commit": CID(self.commit),
            "rev": self.rev,
            "since": self.since,
            "blocks": self.blocks,
            "ops": ops,
            "blobs": [],
            "time": self.time,
        }
        if self.prev_data is not None:
            body["prevData"] = CID(self.prev_data)
        return body

    def to_frame(self, seq: int) -> bytes:
        """The websocket message: DAG-CBOR header `{op: 1, t: "#commit"}` then the body."""
        return encode_dag_cbor({"op": 1, "t": "#commit"}) + encode_dag_cbor(self.body(seq))


@dataclass(frozen=True)
class SyncMessage:
    did: str
    rev: str
    blocks: bytes
    time: str

    def verify_kwargs(self) -> dict[str, Any]:
        return {"did": self.did, "rev": self.rev, "blocks": self.blocks}

    def to_frame(self, seq: int) -> bytes:
        body = {"seq": seq, "did": self.did, "rev": self.rev, "blocks": self.blocks, "time": self.time}
        return encode_dag_cbor({"op": 1, "t": "#sync"}) + encode_dag_cbor(body)  # type: ignore[arg-type]


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


class RepoBuilder:
    """An in-memory atproto repo that emits a signed `#commit` message per change."""

    def __init__(self, did: str, key: SigningKey, *, start: datetime | None = None) -> None:
        self.did = did
        self.key = key
        self._bs = MemoryBlockStore()
        self._ns = NodeStore(self._bs)
        self._wrangler = NodeWrangler(self._ns)
        self.data: CID = self._ns.get_node(None).cid  # MST root; the empty node is stored
        self.records: dict[str, CID] = {}
        self.rev: str | None = None
        self.head: CID | None = None
        self._clock_us = int((start or datetime.now(UTC)).timestamp() * 1_000_000)

    # -- changes -------------------------------------------------------------------------

    def put(self, path: str, record: RecordValue) -> CommitMessage:
        """Create or update one record in its own commit."""
        return self.commit({path: record})

    def delete(self, path: str) -> CommitMessage:
        return self.commit({path: None})

    def commit(self, changes: Mapping[str, RecordValue | None]) -> CommitMessage:
        """Apply creates/updates (a record) and deletes (None) in one signed commit."""
        old_data = self.data
        old_keys = sorted(self.records)
        ops: list[RepoOp] = []
        record_blocks: dict[CID, bytes] = {}
        for path in sorted(changes):
            value = changes[path]
            prev = self.records.get(path)
            if value is None:
                if prev is None:
                    raise ValueError(f"cannot delete absent record {path}")
                self.data = self._wrangler.del_record(self.data, path)
                del self.records[path]
                ops.append(RepoOp("delete", path, None, bytes(prev)))
                continue
            block = value if isinstance(value, bytes) else encode_dag_cbor(dict(value), atjson_mode=True)
            cid = CID.cidv1_dag_cbor_sha256_32_from(block)
            self._bs.put_block(bytes(cid), block)
            record_blocks[cid] = block
            self.data = self._wrangler.put_record(self.data, path, cid)
            self.records[path] = cid
            ops.append(RepoOp("update" if prev else "create", path, bytes(cid), None if prev is None else bytes(prev)))

        since = self.rev
        commit_cid, commit_block, when = self._sign_commit()
        blocks: dict[CID, bytes] = {commit_cid: commit_block, **record_blocks}
        created, _deleted = mst_diff(self._ns, old_data, self.data)
        nodes = set(created)
        for op in ops:
            nodes |= find_rpath_and_build_proof(self._ns, self.data, op.path)[1]
            nodes |= find_rpath_and_build_proof(self._ns, old_data, op.path)[1]
        # Inverting the ops re-inserts deleted keys and deletes created ones; a delete merges the
        # subtrees on either side of the key, whose edge nodes lie on the paths to its neighbours
        # (in the tree before or after, as the inversion passes through both). The commit carries
        # those paths too, as the reference PDS does under Sync 1.1.
        for root, keys in ((old_data, old_keys), (self.data, sorted(self.records))):
            for op in ops:
                at = bisect.bisect_left(keys, op.path)
                for neighbour in keys[max(at - 1, 0) : at + 2]:
                    nodes |= find_rpath_and_build_proof(self._ns, root, neighbour)[1]
        for cid in sorted(nodes, key=bytes):
            blocks[cid] = self._bs.get_block(bytes(cid))
        return CommitMessage(
            repo=self.did,
            rev=self.rev or "",
            since=since,
            commit=bytes(commit_cid),
            blocks=write_car([commit_cid], blocks.items()),
            ops=tuple(ops),
            prev_data=bytes(old_data),
            time=_iso(when),
        )

    def _sign_commit(self) -> tuple[CID, bytes, datetime]:
        self._clock_us += 1000
        when = datetime.fromtimestamp(self._clock_us / 1_000_000, UTC)
        self.rev = make_tid(when)
        unsigned: dict[str, DagCborTypes] = {
            "did": self.did,
            "version": 3,
            "data": self.data,
            "rev": self.rev,
            "prev": None,
        }
        block = encode_dag_cbor({**unsigned, "sig": self.key.sign(encode_dag_cbor(unsigned))})
        cid = CID.cidv1_dag_cbor_sha256_32_from(block)
        self._bs.put_block(bytes(cid), block)
        self.head = cid
        return cid, block, when

    # -- other views of the current state ---------------------------------------------

    def sync_message(self) -> SyncMessage:
        """A `#sync` for the current head (a fresh repo gets an empty signed commit first)."""
        if self.head is None:
            self._sign_commit()
        assert self.head is not None and self.rev is not None
        car = write_car([self.head], [(self.head, self._bs.get_block(bytes(self.head)))])
        return SyncMessage(did=self.did, rev=self.rev, blocks=car, time=_iso(datetime.now(UTC)))

    def record_car(self, path: str) -> bytes:
        """A `com.atproto.sync.getRecord` CAR: commit, MST path, and the record if present."""
        if self.head is None:
            self._sign_commit()
        assert self.head is not None
        value, nodes = find_rpath_and_build_proof(self._ns, self.data, path)
        cids = [self.head, *sorted(nodes, key=bytes)] + ([] if value is None else [value])
        return write_car([self.head], [(c, self._bs.get_block(bytes(c))) for c in cids])

    def repo_car(self) -> bytes:
        """A `com.atproto.sync.getRepo` CAR of the whole current repo."""
        if self.head is None:
            self._sign_commit()
        assert self.head is not None
        cids = [self.head, *NodeWalker(self._ns, self.data).iter_node_cids(), *self.records.values()]
        return write_car([self.head], [(c, self._bs.get_block(bytes(c))) for c in dict.fromkeys(cids)])


def rewrite_commit(msg: CommitMessage, *, key: SigningKey | None = None, **fields: DagCborTypes) -> CommitMessage:
    """Re-encode the message's commit with `fields` changed and put it back in the CAR.

    With `key`, the commit is re-signed (after the changes, unless `sig` is one of them);
    without it the old signature is kept. The message's `commit` CID follows the new block.
    """
    car = read_car(msg.blocks)
    old_cid = CID(msg.commit)
    commit = decode_dag_cbor(car.blocks[old_cid])
    assert isinstance(commit, dict)
    commit.update(fields)
    if key is not None and "sig" not in fields:
        unsigned = {k: v for k, v in commit.items() if k != "sig"}
        commit["sig"] = key.sign(encode_dag_cbor(unsigned))
    block = encode_dag_cbor(commit)
    new_cid = CID.cidv1_dag_cbor_sha256_32_from(block)
    blocks = {new_cid: block, **{c: b for c, b in car.blocks.items() if c != old_cid}}
    return dataclasses.replace(msg, commit=bytes(new_cid), blocks=write_car([new_cid], blocks.items()))


def commit_sig(msg: CommitMessage | SyncMessage) -> bytes:
    car = read_car(msg.blocks)
    commit = decode_dag_cbor(car.blocks[car.roots[0]])
    assert isinstance(commit, dict) and isinstance(commit["sig"], bytes)
    return commit["sig"]
