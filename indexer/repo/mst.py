"""MST lookups over partial trees and Sync 1.1 op inversion, on top of atmst 0.0.6.

A firehose diff holds only some MST nodes, so every block fetch may miss: that raises
`MstError("missing_block")` (never a bare KeyError, so it can't be confused with a
decode bug). Nodes are decoded through atmst with extra type checks (`bad_mst`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from atmst.blockstore import BlockStore
from atmst.mst.node import MSTNode
from atmst.mst.node_store import NodeStore
from atmst.mst.node_walker import NodeWalker
from atmst.mst.node_wrangler import NodeWrangler
from cbrrr import CID

from atmx.indexer.repo.car import VerificationError

__all__ = [
    "EMPTY_NODE_CID",
    "MstError",
    "MstOp",
    "MstView",
    "invert_ops",
    "iter_records",
    "key_height",
    "lookup",
    "normalize_ops",
]

Action = Literal["create", "update", "delete"]

_EMPTY = MSTNode.empty_root()
EMPTY_NODE_CID: CID = _EMPTY.cid
key_height = MSTNode.key_height


class MstError(VerificationError):
    """Reasons: `missing_block`, `bad_mst`, `bad_ops`, `not_deleted`, `ops_do_not_invert`."""


@dataclass(frozen=True, slots=True)
class MstOp:
    action: Action
    path: str
    cid: CID | None
    prev: CID | None


class _OverlayBlocks(BlockStore):  # type: ignore[misc]  # atmst ships no type hints
    """Read-only CAR blocks plus a private layer for nodes built during inversion."""

    def __init__(self, base: Mapping[CID, bytes]) -> None:
        self._base = base
        self._new: dict[bytes, bytes] = {bytes(EMPTY_NODE_CID): _EMPTY.serialised}

    def get_block(self, key: bytes) -> bytes:
        block = self._new.get(key)
        if block is None:
            block = self._base.get(CID(key))
            if block is None:
                raise MstError("missing_block", f"MST block {CID(key).encode()} is not in the CAR")
        return block

    def put_block(self, key: bytes, value: bytes) -> None:
        self._new[key] = value

    def del_block(self, key: bytes) -> None:
        self._new.pop(key, None)


class _CheckedNodeStore(NodeStore):  # type: ignore[misc]  # atmst ships no type hints
    def get_node(self, cid: CID | None) -> MSTNode:
        if cid is None:
            return _EMPTY
        cached = self.cache.get(cid)
        if cached is not None:
            return cached
        data = self.bs.get_block(bytes(cid))
        try:
            node = MSTNode.deserialise(data)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as e:
            raise MstError("bad_mst", f"malformed MST node {cid.encode()}: {e}") from None
        # atmst doesn't type-check links; a non-CID here would surface much later as a TypeError.
        if not all(isinstance(v, CID) for v in node.vals) or not all(
            t is None or isinstance(t, CID) for t in node.subtrees
        ):
            raise MstError("bad_mst", f"MST node {cid.encode()} has a non-CID link")
        object.__setattr__(node, "serialised", data)
        object.__setattr__(node, "cid", cid)
        self.cache[cid] = node
        return node


# --- atmst's private NodeWrangler API: the only code that touches it ---
# atmst==0.0.6 is pinned for this. Relied on (tests/test_mst.py::test_atmst_private_wrangler_api
# pins each point): `_delete_recursive(node, key, key_height, tree_height)` returns the new
# subtree root or None; `_squash_top(cid)` strips empty top nodes, reads each through
# `self.ns.get_node` and recurses through `self._squash_top`, so the override below sees the
# missing child.


class _InvertingWrangler(NodeWrangler):  # type: ignore[misc]  # atmst ships no type hints
    """NodeWrangler that tolerates a missing block when the tree "trims its top".

    Removing the last key of the top node makes the child subtree the new root, and
    its block is often not in the diff. Like indigo (mst/node_remove.go), keep the
    child's CID as an unread stub: a wrong guess can only produce a root that doesn't
    match prevData, so it is fail-safe.
    """

    def _squash_top(self, node_cid: CID | None) -> CID | None:
        try:
            return super()._squash_top(node_cid)  # type: ignore[no-any-return]
        except MstError as e:
            if e.reason != "missing_block":
                raise
            return node_cid

    def del_record(self, root_cid: CID, key: str) -> CID:
        root = self.ns.get_node(root_cid)
        top = self._squash_top(self._delete_recursive(root, key, key_height(key), _height(root)))
        return EMPTY_NODE_CID if top is None else top


# --- end of atmst's private API ---


def _height(node: MSTNode) -> int:
    h: int | None = node.maybe_height
    if h is None:
        raise MstError("bad_mst", "MST root is an empty node that only points to a subtree")
    return h


class MstView:
    """A (possibly partial) MST held in a block map; cheap to build, caches decoded nodes."""

    def __init__(self, blocks: Mapping[CID, bytes]) -> None:
        self.ns = _CheckedNodeStore(_OverlayBlocks(blocks))

    def lookup(self, root: CID, key: str, visited: list[CID] | None = None) -> CID | None:
        """Value at `key`, or None if absent. Reads only the nodes on the key's path, and appends
        their CIDs to `visited` when given (they are the MST part of the key's proof)."""
        node = self.ns.get_node(root)
        if visited is not None:
            visited.append(root)
        height = _height(node)
        kh = key_height(key)
        while True:
            if kh > height:  # the key would have to live above this node
                return None
            i = node.gte_index(key)
            if kh == height:
                return node.vals[i] if i < len(node.keys) and node.keys[i] == key else None
            sub = node.subtrees[i]
            if sub is None:
                return None
            node = self.ns.get_node(sub)
            if visited is not None:
                visited.append(sub)
            height -= 1
            if node.maybe_height is not None and node.maybe_height != height:
                raise MstError("bad_mst", f"MST node {sub.encode()} is at the wrong height")

    def invert(self, root: CID, ops: Sequence[MstOp]) -> CID:
        """Undo `ops` (already checked against `root`) and return the previous root.

        Raises `bad_ops` (shape/duplicates), `not_deleted` (a deleted key is present),
        `ops_do_not_invert` (a created/updated key doesn't hold op.cid), `missing_block`.
        """
        wrangler = _InvertingWrangler(self.ns)
        try:
            for op in normalize_ops(ops):
                current = self.lookup(root, op.path)
                if op.action == "delete":
                    if current is not None:
                        raise MstError("not_deleted", f"deleted key {op.path} is still present")
                    assert op.prev is not None  # by normalize_ops
                    root = wrangler.put_record(root, op.path, op.prev)
                    continue
                if current != op.cid:
                    raise MstError("ops_do_not_invert", f"{op.path} does not hold the op's cid")
                if op.action == "create":
                    root = wrangler.del_record(root, op.path)
                else:
                    assert op.prev is not None
                    root = wrangler.put_record(root, op.path, op.prev)
        except VerificationError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as e:
            # atmst asserts tree invariants with plain exceptions; only a malformed tree trips them
            raise MstError("bad_mst", f"MST inconsistent during inversion: {e}") from None
        return root

    def iter_records(self, root: CID, prefix: str = "") -> Iterator[tuple[str, CID]]:
        """(key, value) for every key starting with `prefix`, in order; needs the covering nodes."""
        walker = NodeWalker(self.ns, root)
        yield from walker.iter_kv_range(prefix, prefix + "\xff")


def normalize_ops(ops: Sequence[MstOp]) -> list[MstOp]:
    """Check op shapes and uniqueness; order deletes first, then by path (as indigo does)."""
    seen: set[str] = set()
    for op in ops:
        if op.path in seen:
            raise MstError("bad_ops", f"duplicate op path {op.path}")
        seen.add(op.path)
        if op.action == "create":
            ok = op.cid is not None and op.prev is None
        elif op.action == "update":
            ok = op.cid is not None and op.prev is not None
        elif op.action == "delete":
            ok = op.cid is None and op.prev is not None
        else:
            raise MstError("bad_ops", f"unknown op action {op.action!r}")
        if not ok:
            raise MstError("bad_ops", f"{op.action} op on {op.path} has the wrong cid/prev shape")
    return sorted(ops, key=lambda op: (op.action != "delete", op.path))


def lookup(root: CID, key: str, blocks: Mapping[CID, bytes]) -> CID | None:
    return MstView(blocks).lookup(root, key)


def invert_ops(root: CID, ops: Sequence[MstOp], blocks: Mapping[CID, bytes]) -> CID:
    return MstView(blocks).invert(root, ops)


def iter_records(root: CID, blocks: Mapping[CID, bytes], prefix: str = "") -> Iterator[tuple[str, CID]]:
    return MstView(blocks).iter_records(root, prefix)
