from __future__ import annotations

import base64
import dataclasses
import json
import random
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import coincurve
import libipld
import pytest
from cbrrr import CID, encode_dag_cbor
from forge import (
    CommitMessage,
    RepoBuilder,
    RepoOp,
    SigningKey,
    commit_sig,
    drop_block,
    high_s,
    replace_block,
    rewrite_commit,
    write_car,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from atmx.indexer.repo.car import read_car
from atmx.indexer.repo.commit import decode_commit
from atmx.indexer.repo.crypto import PublicKey, encode_base58btc, parse_legacy_key, parse_verification_method
from atmx.indexer.repo.verify import (
    MAX_RECORD_SIZE,
    VerificationError,
    decode_record,
    verify_commit_message,
    verify_record_proof,
    verify_sync_message,
)

DEVNET = Path(__file__).parent / "fixtures" / "devnet-frames"
INDEX = json.loads((DEVNET / "index.json").read_text())
DID_DOCS = json.loads((DEVNET / "did-docs.json").read_text())
FRAME_43_DID = "did:plc:icl7axtgf3gylylkygby2l2f"
NOW = datetime.now(UTC)
DID = "did:plc:alice"


def _key_for(did: str) -> PublicKey:
    (method,) = DID_DOCS[did]["verificationMethod"]
    assert method["id"] == "#atproto" and method["type"] == "EcdsaSecp256k1VerificationKey2019"
    return parse_legacy_key(method["publicKeyMultibase"], "k256")


def _recover_key(body: dict[str, Any]) -> PublicKey:
    """Frame 43's account is not in did-docs.json, so recover its key from the signature.

    This exercises everything but the key's authenticity (ECDSA recovery yields a key
    that the signature verifies under, by construction).
    """
    car = read_car(body["blocks"])
    commit = decode_commit(car.blocks[car.roots[0]])
    pub = coincurve.PublicKey.from_signature_and_message(commit.sig + b"\x00", commit.unsigned_bytes())
    return parse_verification_method("EcdsaSecp256k1VerificationKey2019", encode_base58btc(pub.format()))


@cache
def _frames() -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for path in sorted(DEVNET.glob("*.bin")):
        header, body = libipld.decode_dag_cbor_multi(path.read_bytes())
        if header.get("t") in ("#commit", "#sync"):
            out.append((path.name, header["t"], body))
    return out


def _ops(body: dict[str, Any]) -> list[SimpleNamespace]:
    return [SimpleNamespace(action=o["action"], path=o["path"], cid=o["cid"], prev=o.get("prev")) for o in body["ops"]]


def _event_time(body: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(body["time"].replace("Z", "+00:00"))


def _verify_frame(kind: str, body: dict[str, Any], key: PublicKey) -> Any:
    if kind == "#sync":
        return verify_sync_message(
            did=body["did"], rev=body["rev"], blocks=body["blocks"], key=key, now=_event_time(body)
        )
    return verify_commit_message(
        did=body["repo"],
        rev=body["rev"],
        commit_cid=body["commit"],
        blocks=body["blocks"],
        ops=_ops(body),
        prev_data=body.get("prevData"),
        key=key,
        now=_event_time(body),
    )


def test_devnet_frames_all_verify() -> None:
    index_ops = {f["file"]: f.get("ops", []) for f in INDEX["frames"]}
    seen = {"#commit": 0, "#sync": 0}
    for name, kind, body in _frames():
        did = body.get("repo") or body["did"]
        if did == FRAME_43_DID:
            assert did not in DID_DOCS
            continue
        result = _verify_frame(kind, body, _key_for(did))
        seen[kind] += 1
        assert result.did == did and result.rev == body["rev"]
        for op in index_ops[name]:  # records come out exactly as the PDS's JSON view of them
            if op["action"] == "delete":
                assert op["path"] in result.deletes
            else:
                cid, block = result.writes[op["path"]]
                assert block is not None and (cid, decode_record(block)) == (op["cid"], op["record"])
    assert seen == {"#commit": 20, "#sync": 5}


def test_frame_43_200_creates() -> None:
    ((_name, kind, body),) = [f for f in _frames() if f[2].get("repo") == FRAME_43_DID]
    key = _recover_key(body)
    result = _verify_frame(kind, body, key)
    assert len(result.writes) == 200 and result.prev_data is not None
    assert all(path.startswith("org.xmtp.inbox/") for path in result.writes)
    with pytest.raises(VerificationError, match="bad_signature"):
        _verify_frame(kind, body, SigningKey.generate("k256").public_key)
    # dropping one op breaks inversion
    body2 = {**body, "ops": body["ops"][1:]}
    with pytest.raises(VerificationError) as e:
        _verify_frame(kind, body2, key)
    assert e.value.reason == "ops_do_not_invert"


def test_devnet_frame_rejects_wrong_account_key() -> None:
    _name, kind, body = next(f for f in _frames() if f[0].startswith("31-"))
    bob = "did:plc:vxtj3s3k4d4j4skhbkbxu2e2"
    with pytest.raises(VerificationError) as e:
        _verify_frame(kind, body, _key_for(bob))
    assert e.value.reason == "bad_signature"


# -- forgeries built with real keys ------------------------------------------------------


@pytest.fixture(params=["k256", "p256"])
def key(request: pytest.FixtureRequest) -> SigningKey:
    return SigningKey.generate(request.param)


def _repo(key: SigningKey, n: int = 30) -> RepoBuilder:
    repo = RepoBuilder(DID, key, start=NOW)
    repo.commit({f"app.bsky.feed.post/{i:04d}": {"text": f"post {i}"} for i in range(n)})
    return repo


def _verify(msg: CommitMessage, key: SigningKey | PublicKey, **overrides: Any) -> Any:
    pub = key.public_key if isinstance(key, SigningKey) else key
    kwargs = {**msg.verify_kwargs(), "key": pub, "now": NOW, **overrides}
    return verify_commit_message(**kwargs)


def _reason(msg: CommitMessage, key: SigningKey | PublicKey, **overrides: Any) -> str:
    with pytest.raises(VerificationError) as e:
        _verify(msg, key, **overrides)
    reason: str = e.value.reason
    return reason


def test_builder_messages_verify(key: SigningKey) -> None:
    repo = _repo(key)
    create = repo.put("org.xmtp.inbox/self", {"$type": "org.xmtp.inbox", "id": "ab", "b": {"$bytes": "AAEC"}})
    got = _verify(create, key)
    block = got.writes["org.xmtp.inbox/self"][1]
    assert block is not None and decode_record(block) == {
        "$type": "org.xmtp.inbox",
        "id": "ab",
        "b": {"$bytes": "AAEC"},
    }
    update = repo.put("org.xmtp.inbox/self", {"$type": "org.xmtp.inbox", "id": "cd"})
    assert _verify(update, key).prev_data == _verify(create, key).data_cid
    multi = repo.commit({"app.bsky.feed.post/0003": None, "org.xmtp.inbox/self": None, "a.b.c/x": {"v": 1}})
    got = _verify(multi, key)
    assert got.deletes == ("app.bsky.feed.post/0003", "org.xmtp.inbox/self") and list(got.writes) == ["a.b.c/x"]
    assert got.commit_cid == CID(multi.commit).encode()
    # libipld decodes the built frame into the same fields
    _header, body = libipld.decode_dag_cbor_multi(multi.to_frame(seq=9))
    assert body["seq"] == 9 and body["commit"] == multi.commit and body["prevData"] == multi.prev_data


def test_random_multi_op_commits_carry_what_their_inversion_needs(key: SigningKey) -> None:
    """Every honest commit must invert to prevData from its own blocks, or atmx would refetch
    repos for nothing: creates, updates and deletes mixed in one commit, over a tree deep enough
    that a delete merges subtrees (the builder's benchmark corpus relies on this too)."""
    rng = random.Random(7)
    repo = _repo(key)
    live: list[str] = []
    for n in range(300):
        changes: dict[str, dict[str, Any] | None] = {}
        for _ in range(rng.randint(1, 3)):
            deletable = [p for p in live if p not in changes]
            if deletable and rng.random() < 0.3:
                path = rng.choice(deletable)
                live.remove(path)
                changes[path] = None
                continue
            collection = rng.choice(["app.bsky.feed.like", "app.bsky.feed.post", "org.xmtp.inbox"])
            rkey = "self" if collection == "org.xmtp.inbox" else f"3k{rng.randrange(10**9):09d}"
            path = f"{collection}/{rkey}"
            if path in changes:
                continue
            if path not in live:
                live.append(path)
            changes[path] = {"$type": collection, "n": n}
        _verify(repo.commit(changes), key)  # raises on a missing block


def test_signed_by_another_key(key: SigningKey) -> None:
    msg = _repo(key).put("org.xmtp.inbox/self", {"id": "x"})
    assert _reason(msg, SigningKey.generate(key.curve)) == "bad_signature"


def test_high_s_variant_of_valid_signature(key: SigningKey) -> None:
    msg = _repo(key).put("org.xmtp.inbox/self", {"id": "x"})
    forged = rewrite_commit(msg, sig=high_s(commit_sig(msg), key.curve))
    assert _reason(forged, key) == "bad_signature"


def test_block_not_matching_its_cid(key: SigningKey) -> None:
    msg = _repo(key).put("org.xmtp.inbox/self", {"id": "x"})
    record_cid = CID(msg.ops[0].cid or b"")
    forged = dataclasses.replace(msg, blocks=replace_block(msg.blocks, record_cid, encode_dag_cbor({"id": "y"})))
    assert _reason(forged, key) == "hash_mismatch"


def test_op_cid_not_in_tree(key: SigningKey) -> None:
    msg = _repo(key).put("org.xmtp.inbox/self", {"id": "x"})
    other = encode_dag_cbor({"id": "evil"})
    other_cid = CID.cidv1_dag_cbor_sha256_32_from(other)
    car = read_car(msg.blocks)
    blocks = write_car(car.roots, [*car.blocks.items(), (other_cid, other)])
    forged = dataclasses.replace(msg, blocks=blocks, ops=(dataclasses.replace(msg.ops[0], cid=bytes(other_cid)),))
    assert _reason(forged, key) == "ops_do_not_invert"  # the inversion looks every op up in the tree
    assert _reason(forged, key, prev_data=None) == "cid_mismatch"  # without prevData, each op on its own


def test_delete_of_a_key_still_present(key: SigningKey) -> None:
    repo = RepoBuilder(DID, key, start=NOW)
    first = repo.commit({"a.b/1": {"v": 1}, "a.b/2": {"v": 2}})
    msg = repo.put("a.b/3", {"v": 3})
    fake_delete = RepoOp("delete", "a.b/1", None, first.ops[0].cid)
    forged = dataclasses.replace(msg, ops=(*msg.ops, fake_delete))
    assert _reason(forged, key) == "not_deleted"


def test_ops_that_do_not_invert(key: SigningKey) -> None:
    repo = _repo(key)
    msg = repo.commit({"a.b/1": {"v": 1}, "a.b/2": {"v": 2}})
    assert _reason(msg, key, prev_data=bytes(CID.cidv1_dag_cbor_sha256_32_from(b"x"))) == "ops_do_not_invert"
    assert _reason(msg, key, ops=msg.ops[:1]) == "ops_do_not_invert"
    # without prevData (legacy/first commit) the inversion check is skipped
    assert _verify(msg, key, ops=msg.ops[:1], prev_data=None).prev_data is None


def test_commit_for_another_did(key: SigningKey) -> None:
    msg = _repo(key).put("org.xmtp.inbox/self", {"id": "x"})
    forged = rewrite_commit(msg, key=key, did="did:plc:mallory")
    assert _reason(forged, key) == "did_mismatch"
    assert _reason(msg, key, did="did:plc:mallory") == "did_mismatch"


def test_rev_mismatch_and_future_rev(key: SigningKey) -> None:
    msg = _repo(key).put("org.xmtp.inbox/self", {"id": "x"})
    assert _reason(msg, key, rev="3n2ve3bzcx22t") == "rev_mismatch"
    assert _reason(msg, key, now=NOW - timedelta(minutes=10)) == "future_rev"


def test_records_are_returned_undecoded(key: SigningKey) -> None:
    """A record is a proven block: whether it decodes is the record's problem (index/plan.py), never
    the commit's, so an unrelated record that is not DAG-CBOR cannot hide the other ops."""
    msg = _repo(key, 3).commit({"org.xmtp.inbox/self": b"\xa1\x61", "a.b/1": {"v": 1}})
    got = _verify(msg, key)
    assert got.writes["org.xmtp.inbox/self"][1] == b"\xa1\x61"
    big = {"blob": {"$bytes": base64.b64encode(b"\x00" * (MAX_RECORD_SIZE + 1)).decode().rstrip("=")}}
    block = _verify(_repo(key, 3).put("org.xmtp.inbox/self", big), key).writes["org.xmtp.inbox/self"][1]
    assert block is not None
    with pytest.raises(VerificationError, match="record_too_large"):
        decode_record(block)


@pytest.mark.parametrize("block", [b"\xa1\x61", encode_dag_cbor([1, 2]), b"\xa1\x61a\x01\x00"])
def test_malformed_record_blocks_do_not_decode(block: bytes) -> None:
    with pytest.raises(VerificationError, match="bad_record"):
        decode_record(block)


def test_malformed_commit_and_car(key: SigningKey) -> None:
    msg = _repo(key, 3).put("org.xmtp.inbox/self", {"id": "x"})
    junk = b"\xa1\x61"
    junk_cid = CID.cidv1_dag_cbor_sha256_32_from(junk)
    forged = dataclasses.replace(msg, commit=bytes(junk_cid), blocks=write_car([junk_cid], [(junk_cid, junk)]))
    assert _reason(forged, key) == "bad_commit"
    assert _reason(msg, key, blocks=msg.blocks[:-3]) == "bad_car"
    assert _reason(msg, key, blocks=b"\x00garbage") == "bad_car"
    assert _reason(msg, key, commit_cid=bytes(junk_cid)) == "root_mismatch"
    assert _reason(msg, key, commit_cid=b"\x01\x02") == "bad_commit"


def test_missing_blocks(key: SigningKey) -> None:
    msg = _repo(key).put("org.xmtp.inbox/self", {"id": "x"})
    no_record = dataclasses.replace(msg, blocks=drop_block(msg.blocks, CID(msg.ops[0].cid or b"")))
    assert _verify(no_record, key).writes["org.xmtp.inbox/self"][1] is None  # proven CID, block absent
    no_commit = dataclasses.replace(msg, blocks=drop_block(msg.blocks, CID(msg.commit)))
    assert _reason(no_commit, key) == "missing_block"
    data = decode_commit(read_car(msg.blocks).blocks[CID(msg.commit)]).data
    no_root = dataclasses.replace(msg, blocks=drop_block(msg.blocks, data))
    assert _reason(no_root, key) == "missing_block"


def test_bad_op_shapes_and_duplicates(key: SigningKey) -> None:
    msg = _repo(key, 3).put("org.xmtp.inbox/self", {"id": "x"})
    assert _reason(msg, key, ops=(*msg.ops, msg.ops[0])) == "bad_ops"
    assert _reason(msg, key, ops=(dataclasses.replace(msg.ops[0], prev=msg.ops[0].cid),)) == "bad_ops"
    assert _reason(msg, key, ops=(dataclasses.replace(msg.ops[0], cid=b"short"),)) == "bad_ops"


def test_sync_message(key: SigningKey) -> None:
    repo = _repo(key, 5)
    sync = repo.sync_message()
    got = verify_sync_message(**sync.verify_kwargs(), key=key.public_key, now=NOW)
    assert got.rev == repo.rev and got.commit_cid == (repo.head.encode() if repo.head else None)
    with pytest.raises(VerificationError, match="bad_signature"):
        verify_sync_message(**sync.verify_kwargs(), key=SigningKey.generate(key.curve).public_key, now=NOW)
    with pytest.raises(VerificationError, match="rev_mismatch"):
        verify_sync_message(**{**sync.verify_kwargs(), "rev": "3n2ve3bzcx22t"}, key=key.public_key, now=NOW)
    with pytest.raises(VerificationError, match="did_mismatch"):
        verify_sync_message(**{**sync.verify_kwargs(), "did": "did:plc:bob"}, key=key.public_key, now=NOW)


def test_record_proof(key: SigningKey) -> None:
    repo = _repo(key, 50)
    repo.put("org.xmtp.inbox/self", {"id": "x"})
    pub = key.public_key
    proof = verify_record_proof(
        did=DID,
        collection="org.xmtp.inbox",
        rkey="self",
        car=repo.record_car("org.xmtp.inbox/self"),
        key=pub,
        now=NOW,
    )
    assert proof.block is not None and decode_record(proof.block) == {"id": "x"}
    assert proof.cid == repo.records["org.xmtp.inbox/self"].encode()
    assert proof.rev == repo.rev
    absent = verify_record_proof(
        did=DID,
        collection="org.xmtp.inbox",
        rkey="nope",
        car=repo.record_car("org.xmtp.inbox/nope"),
        key=pub,
        now=NOW,
    )
    assert absent.cid is None and absent.block is None
    # a CAR missing the path to the record proves nothing
    car = repo.record_car("org.xmtp.inbox/self")
    data = decode_commit(read_car(car).blocks[read_car(car).roots[0]]).data
    with pytest.raises(VerificationError, match="missing_block"):
        verify_record_proof(
            did=DID, collection="org.xmtp.inbox", rkey="self", car=drop_block(car, data), key=pub, now=NOW
        )
    with pytest.raises(VerificationError, match="bad_signature"):
        verify_record_proof(
            did=DID,
            collection="org.xmtp.inbox",
            rkey="self",
            car=car,
            key=SigningKey.generate().public_key,
            now=NOW,
        )


def test_decode_record_json_form() -> None:
    link = CID.cidv1_raw_sha256_32_from(b"img")
    block = encode_dag_cbor({"$type": "x", "ref": link, "b": b"\x00\x01\x02", "n": [1, None, True]})
    assert decode_record(block) == {
        "$type": "x",
        "ref": {"$link": link.encode()},
        "b": {"$bytes": "AAEC"},
        "n": [1, None, True],
    }


def test_errors_are_value_errors_with_reasons() -> None:
    _name, kind, body = next(f for f in _frames() if f[1] == "#commit")
    with pytest.raises(ValueError) as e:
        _verify_frame(kind, {**body, "blocks": body["blocks"][:-1]}, _key_for(body["repo"]))
    assert isinstance(e.value, VerificationError) and e.value.reason == "bad_car"


_FUZZ_KEY = SigningKey.generate("k256")
_FUZZ_REPO = RepoBuilder(DID, _FUZZ_KEY)
_FUZZ_REPO.commit({f"a.b/{i:03d}": {"v": i} for i in range(40)})
_FUZZ_MSG = _FUZZ_REPO.commit({"a.b/007": None, "a.b/new": {"v": "new"}, "a.b/010": {"v": "changed"}})


@settings(max_examples=400, deadline=None)
@given(st.integers(min_value=0), st.binary(min_size=1, max_size=3))
def test_fuzz_corrupted_message_only_raises_verification_errors(pos: int, junk: bytes) -> None:
    data = _FUZZ_MSG.blocks
    pos %= len(data)
    corrupted = data[:pos] + junk + data[pos + len(junk) :]
    try:
        _verify(_FUZZ_MSG, _FUZZ_KEY, blocks=corrupted)
    except VerificationError:
        return
    assert corrupted == data or read_car(corrupted).blocks == read_car(data).blocks


def test_a_commit_proves_each_of_its_records_alone(key: SigningKey) -> None:
    """VerifiedCommit.proof: a getRecord-shaped CAR that verify_record_proof accepts on its own."""
    repo = _repo(key, 40)
    msg = repo.commit({"org.xmtp.inbox/self": {"id": "x"}, "a.b/zz": {"v": 1}})
    got = _verify(msg, key)
    car = got.proof("org.xmtp.inbox/self")
    proof = verify_record_proof(did=DID, collection="org.xmtp.inbox", rkey="self", car=car, key=key.public_key, now=NOW)
    assert proof.cid == got.writes["org.xmtp.inbox/self"][0] and proof.rev == repo.rev
    assert len(read_car(car).blocks) < len(read_car(msg.blocks).blocks)  # the path only, not the diff
