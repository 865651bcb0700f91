from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import libipld
import pytest
from cbrrr import CID, DagCborTypes, decode_dag_cbor, encode_dag_cbor
from forge import SigningKey, high_s, make_tid

from atmx.indexer.repo.car import read_car
from atmx.indexer.repo.commit import (
    CommitError,
    check_rev_not_future,
    decode_commit,
    tid_timestamp_us,
    verify_commit_signature,
)
from atmx.indexer.repo.crypto import PublicKey, parse_legacy_key

DEVNET = Path(__file__).parent / "fixtures" / "devnet-frames"
ALICE = "did:plc:nbcjflbg4exvv7izplf43elu"
DATA = CID.cidv1_dag_cbor_sha256_32_from(b"mst root")


def _alice_key() -> PublicKey:
    doc = json.loads((DEVNET / "did-docs.json").read_text())[ALICE]
    return parse_legacy_key(doc["verificationMethod"][0]["publicKeyMultibase"], "k256")


def _devnet_commit_block(name: str) -> bytes:
    _header, body = libipld.decode_dag_cbor_multi((DEVNET / name).read_bytes())
    car = read_car(body["blocks"])
    block: bytes = car.blocks[car.roots[0]]
    return block


def _signed(key: SigningKey, **fields: DagCborTypes) -> bytes:
    unsigned: dict[str, DagCborTypes] = {
        "did": "did:plc:x",
        "version": 3,
        "data": DATA,
        "rev": "3n2ve3bzcx22t",
        "prev": None,
    }
    unsigned.update(fields)
    return encode_dag_cbor({**unsigned, "sig": key.sign(encode_dag_cbor(unsigned))})


def test_devnet_commit_decodes_and_verifies() -> None:
    block = _devnet_commit_block("17-live-seq0017-commit.bin")
    commit = decode_commit(block)
    assert commit.did == ALICE and commit.version == 3 and commit.prev is None
    assert len(commit.sig) == 64
    # unsigned bytes + sig re-encode to the exact signed block
    unsigned = decode_dag_cbor(commit.unsigned_bytes())
    assert isinstance(unsigned, dict) and "sig" not in unsigned and "prev" in unsigned
    assert encode_dag_cbor({**unsigned, "sig": commit.sig}) == block
    verify_commit_signature(commit, _alice_key())


def test_wrong_key_and_high_s_rejected() -> None:
    commit = decode_commit(_devnet_commit_block("17-live-seq0017-commit.bin"))
    with pytest.raises(CommitError) as e:
        verify_commit_signature(commit, SigningKey.generate("k256").public_key)
    assert e.value.reason == "bad_signature"
    key = SigningKey.generate("p256")
    good = decode_commit(_signed(key))
    verify_commit_signature(good, key.public_key)
    forged = decode_commit(_signed(key, sig=high_s(good.sig, "p256")))
    with pytest.raises(CommitError, match="bad_signature"):
        verify_commit_signature(forged, key.public_key)


def test_unknown_fields_stay_signed() -> None:
    key = SigningKey.generate("k256")
    commit = decode_commit(_signed(key, extra="x"))
    verify_commit_signature(commit, key.public_key)
    assert decode_dag_cbor(commit.unsigned_bytes())["extra"] == "x"  # type: ignore[index,call-overload]


_GOOD = {"did": "did:plc:x", "version": 3, "data": DATA, "rev": "3n2ve3bzcx22t", "prev": None, "sig": b"s"}


def _variant(**changes: object) -> bytes:
    obj: dict[str, Any] = {**_GOOD, **changes}
    return encode_dag_cbor({k: v for k, v in obj.items() if v is not _DROP})


_DROP = object()


@pytest.mark.parametrize(
    "block",
    [
        b"\xff",
        encode_dag_cbor([1, 2]),
        _variant(version=2),
        _variant(version=True),
        _variant(prev=_DROP),
        _variant(rev="not-a-tid"),
        _variant(did="x"),
        _variant(data="bafy"),
        _variant(prev=1),
        _variant(sig="s"),
        _variant(sig=_DROP),
    ],
    ids="not-cbor not-map v2 version-bool no-prev bad-rev bad-did data-str prev-int sig-str no-sig".split(),
)
def test_malformed_commits(block: bytes) -> None:
    with pytest.raises(CommitError) as e:
        decode_commit(block)
    assert e.value.reason == "bad_commit"


def test_tid_time_and_future_rev() -> None:
    now = datetime(2026, 11, 22, 9, 57, 49, tzinfo=UTC)
    assert tid_timestamp_us(make_tid(now)) == int(now.timestamp() * 1_000_000)
    # frame 03's rev was minted just before its event time, 09:57:49.043Z
    assert 0 < now.timestamp() * 1_000_000 + 43_000 - tid_timestamp_us("3n2ve3bzcx22t") < 2_000_000
    check_rev_not_future(make_tid(now + timedelta(minutes=4)), now)
    with pytest.raises(CommitError) as e:
        check_rev_not_future(make_tid(now + timedelta(minutes=6)), now)
    assert e.value.reason == "future_rev"
