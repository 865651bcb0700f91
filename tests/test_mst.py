from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest
from atmst.blockstore import MemoryBlockStore
from atmst.mst.node import MSTNode
from atmst.mst.node_store import NodeStore
from atmst.mst.node_wrangler import NodeWrangler
from cbrrr import CID, encode_dag_cbor
from hypothesis import given, settings
from hypothesis import strategies as st

from atmx.indexer.repo.car import read_car
from atmx.indexer.repo.commit import decode_commit
from atmx.indexer.repo.mst import (
    EMPTY_NODE_CID,
    MstError,
    MstOp,
    MstView,
    _InvertingWrangler,
    invert_ops,
    iter_records,
    key_height,
    lookup,
    normalize_ops,
)

FIXTURES = Path(__file__).parent / "fixtures"
PROOF_CASES: list[dict[str, Any]] = json.loads(
    (FIXTURES / "interop" / "firehose" / "commit-proof-fixtures.json").read_text()
)


def _cid(n: int) -> CID:
    return CID.cidv1_dag_cbor_sha256_32_from(encode_dag_cbor({"n": n}))


class Tree:
    """A complete MST built with plain atmst, to produce the partial views under test."""

    def __init__(self) -> None:
        self.bs = MemoryBlockStore()
        self.ns = NodeStore(self.bs)
        self.wrangler = NodeWrangler(self.ns)
        self.root: CID = self.ns.get_node(None).cid

    def put(self, key: str, value: CID) -> CID:
        self.root = self.wrangler.put_record(self.root, key, value)
        return self.root

    def delete(self, key: str) -> CID:
        self.root = self.wrangler.del_record(self.root, key)
        return self.root

    def blocks(self, cids: list[CID] | None = None) -> dict[CID, bytes]:
        state: dict[bytes, bytes] = self.bs._state
        chosen = state if cids is None else {bytes(c): state[bytes(c)] for c in cids}
        return {CID(k): v for k, v in chosen.items()}


def test_key_heights() -> None:
    cases = json.loads((FIXTURES / "interop" / "mst" / "key_heights.json").read_text())
    assert len(cases) == 9
    for case in cases:
        assert key_height(case["key"]) == case["height"], case["key"]


@pytest.mark.parametrize("case", PROOF_CASES, ids=[c["comment"] for c in PROOF_CASES])
def test_commit_proof_fixtures_invert_with_only_proof_blocks(case: dict[str, Any]) -> None:
    leaf = CID.decode(case["leafValue"])
    tree = Tree()
    for k in case["keys"]:
        tree.put(k, leaf)
    assert tree.root == CID.decode(case["rootBeforeCommit"])
    for k in case["adds"]:
        tree.put(k, leaf)
    for k in case["dels"]:
        tree.delete(k)
    after = CID.decode(case["rootAfterCommit"])
    assert tree.root == after

    proof = tree.blocks([CID.decode(c) for c in case["blocksInProof"]])
    ops = [MstOp("create", k, leaf, None) for k in case["adds"]]
    ops += [MstOp("delete", k, None, leaf) for k in case["dels"]]
    view = MstView(proof)
    for k in case["adds"]:
        assert view.lookup(after, k) == leaf
    for k in case["dels"]:
        assert view.lookup(after, k) is None
    assert invert_ops(after, ops, proof) == CID.decode(case["rootBeforeCommit"])


def test_trim_top_with_missing_child_block() -> None:
    # Find a key taller than every existing key and sorting after them: creating it puts
    # a new top node above the old root, and inverting must "trim the top" back to the old
    # root, whose block a real diff does not carry.
    tree = Tree()
    for i in range(6):
        tree.put(f"com.example.record/{i:03d}", _cid(i))
    old_root = tree.root
    old_height = tree.ns.get_node(old_root).maybe_height
    tall = next(k for k in (f"com.example.record/z{i}" for i in range(100_000)) if key_height(k) > old_height)
    new_root = tree.put(tall, _cid(99))
    top = tree.ns.get_node(new_root)
    assert top.keys == (tall,) and top.subtrees[0] is not None
    assert top.subtrees[0] == old_root or tree.ns.get_node(top.subtrees[0]).maybe_height is None

    blocks = tree.blocks()
    del blocks[old_root]  # the unchanged subtree is not part of the diff
    if top.subtrees[0] != old_root:  # intermediate empty nodes are new, so the diff carries them
        assert old_root not in blocks
    assert invert_ops(new_root, [MstOp("create", tall, _cid(99), None)], blocks) == old_root


_ATMST_CHANGED = (
    "atmst's NodeWrangler internals changed: _InvertingWrangler (indexer/repo/mst.py) overrides "
    "_squash_top and calls _delete_recursive; compare them with atmst/mst/node_wrangler.py before "
    "moving the atmst pin"
)


def test_atmst_private_wrangler_api() -> None:
    # 1. the two private methods, with the parameters the override and del_record pass
    squash = list(inspect.signature(NodeWrangler._squash_top).parameters)
    delete = list(inspect.signature(NodeWrangler._delete_recursive).parameters)
    assert squash == ["self", "node_cid"], _ATMST_CHANGED
    assert delete == ["self", "node", "key", "key_height", "tree_height"], _ATMST_CHANGED

    # 2. on a complete tree, _squash_top(_delete_recursive(...)) is atmst's own del_record
    tree = Tree()
    keys = [f"com.example.record/{i:03d}" for i in range(80)]
    for i, k in enumerate(keys):
        tree.put(k, _cid(i))
    ours = _InvertingWrangler(MstView(tree.blocks()).ns)
    for k in keys:
        assert ours.del_record(tree.root, k) == NodeWrangler(tree.ns).del_record(tree.root, k), _ATMST_CHANGED

    # 3. _squash_top reads each empty top node through self.ns and recurses through
    # self._squash_top: with the child's block missing, the override keeps the child's CID
    child = _cid(7)  # stands for a subtree block the diff does not carry
    view = MstView({})
    empty_top = view.ns.stored_node(MSTNode(keys=(), vals=(), subtrees=(child,)))
    empty_above = view.ns.stored_node(MSTNode(keys=(), vals=(), subtrees=(empty_top.cid,)))
    with pytest.raises(MstError) as e:
        NodeWrangler(view.ns)._squash_top(empty_above.cid)
    assert e.value.reason == "missing_block", _ATMST_CHANGED
    assert _InvertingWrangler(view.ns)._squash_top(empty_above.cid) == child, _ATMST_CHANGED


def test_removing_the_only_key_gives_the_empty_node() -> None:
    tree = Tree()
    root = tree.put("a.b/c", _cid(1))
    assert invert_ops(root, [MstOp("create", "a.b/c", _cid(1), None)], tree.blocks()) == EMPTY_NODE_CID


def test_lookup_on_partial_tree_raises_missing_block() -> None:
    tree = Tree()
    for i in range(200):
        tree.put(f"com.example.record/{i:04d}", _cid(i))
    blocks = tree.blocks()
    assert lookup(tree.root, "com.example.record/0042", blocks) == _cid(42)
    assert lookup(tree.root, "com.example.record/missing", blocks) is None
    only_root = {tree.root: blocks[tree.root]}
    with pytest.raises(MstError) as e:
        for i in range(200):  # some key must live below the root
            lookup(tree.root, f"com.example.record/{i:04d}", only_root)
    assert e.value.reason == "missing_block"
    with pytest.raises(MstError, match="missing_block"):
        lookup(_cid(5), "a/b", blocks)


def test_inversion_checks() -> None:
    tree = Tree()
    for i in range(20):
        tree.put(f"a.b/{i:02d}", _cid(i))
    before = tree.root
    after = tree.put("a.b/new", _cid(100))
    blocks = tree.blocks()
    assert invert_ops(after, [MstOp("create", "a.b/new", _cid(100), None)], blocks) == before
    with pytest.raises(MstError) as e:  # created value is not what the op claims
        invert_ops(after, [MstOp("create", "a.b/new", _cid(101), None)], blocks)
    assert e.value.reason == "ops_do_not_invert"
    with pytest.raises(MstError) as e:  # a "delete" of a key that is still there
        invert_ops(after, [MstOp("delete", "a.b/05", None, _cid(5))], blocks)
    assert e.value.reason == "not_deleted"
    # an update inverts by restoring prev
    after2 = tree.put("a.b/07", _cid(700))
    assert invert_ops(after2, [MstOp("update", "a.b/07", _cid(700), _cid(7))], tree.blocks()) == after


@pytest.mark.parametrize(
    "ops",
    [
        [MstOp("create", "a/b", _cid(1), None), MstOp("delete", "a/b", None, _cid(1))],
        [MstOp("create", "a/b", None, None)],
        [MstOp("create", "a/b", _cid(1), _cid(2))],
        [MstOp("update", "a/b", _cid(1), None)],
        [MstOp("delete", "a/b", _cid(1), _cid(1))],
        [MstOp("delete", "a/b", None, None)],
        [MstOp("upsert", "a/b", _cid(1), None)],
    ],
)
def test_bad_op_shapes(ops: list[MstOp]) -> None:
    with pytest.raises(MstError) as e:
        normalize_ops(ops)
    assert e.value.reason == "bad_ops"


def test_normalize_orders_deletes_first_then_path() -> None:
    ops = [
        MstOp("create", "b/1", _cid(1), None),
        MstOp("delete", "c/1", None, _cid(2)),
        MstOp("update", "a/1", _cid(3), _cid(4)),
        MstOp("delete", "a/2", None, _cid(5)),
    ]
    assert [op.path for op in normalize_ops(ops)] == ["a/2", "c/1", "a/1", "b/1"]


def test_malformed_node_is_bad_mst() -> None:
    bad = encode_dag_cbor({"e": [{"k": b"a/b", "p": 0, "t": None, "v": "not a cid"}], "l": None})
    cid = CID.cidv1_dag_cbor_sha256_32_from(bad)
    with pytest.raises(MstError) as e:
        lookup(cid, "a/b", {cid: bad})
    assert e.value.reason == "bad_mst"
    junk = encode_dag_cbor({"x": 1})
    jcid = CID.cidv1_dag_cbor_sha256_32_from(junk)
    with pytest.raises(MstError, match="bad_mst"):
        lookup(jcid, "a/b", {jcid: junk})


def test_iter_records_on_real_repo() -> None:
    car = read_car((FIXTURES / "devnet-frames" / "getRepo-alice.car").read_bytes())
    data = decode_commit(car.blocks[car.roots[0]]).data
    everything = list(iter_records(data, car.blocks))
    keys = [k for k, _ in everything]
    assert keys == sorted(keys) and len(keys) == len(set(keys))
    assert "org.xmtp.inbox/self" in keys
    for _k, v in everything:
        assert v in car.blocks  # getRepo carries every record
    inbox = list(iter_records(data, car.blocks, "org.xmtp.inbox/"))
    assert [k for k, _ in inbox] == [k for k in keys if k.startswith("org.xmtp.inbox/")]
    assert inbox and all(lookup(data, k, car.blocks) == v for k, v in inbox)


_cbor_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=40),
    st.binary(max_size=8),
    st.text(max_size=8),
    st.sampled_from([_cid(1), _cid(2)]),
)
_entry = st.fixed_dictionaries({"k": _cbor_leaf, "p": _cbor_leaf, "t": _cbor_leaf, "v": _cbor_leaf})
_node = st.fixed_dictionaries({"e": st.one_of(_cbor_leaf, st.lists(_entry, max_size=4)), "l": _cbor_leaf})


@settings(max_examples=400, deadline=None)
@given(_node, st.text(max_size=6))
def test_fuzz_malformed_nodes_only_raise_mst_errors(node: dict[str, Any], key: str) -> None:
    block = encode_dag_cbor(node)
    cid = CID.cidv1_dag_cbor_sha256_32_from(block)
    blocks = {cid: block}
    try:
        lookup(cid, key, blocks)
        invert_ops(cid, [MstOp("create", key, _cid(1), None)], blocks)
    except MstError:
        pass
