from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cbrrr import CID, encode_dag_cbor
from forge import _varint, replace_block, write_car
from hypothesis import given, settings
from hypothesis import strategies as st

from atmx.indexer.repo.car import CarError, read_car

FIXTURES = Path(__file__).parent / "fixtures"


def _block(data: bytes) -> tuple[CID, bytes]:
    return CID.cidv1_dag_cbor_sha256_32_from(data), data


def _header(obj: object) -> bytes:
    h = encode_dag_cbor(obj)  # type: ignore[arg-type]
    return _varint(len(h)) + h


A = _block(encode_dag_cbor({"a": 1}))
B = _block(encode_dag_cbor({"b": "two"}))


def test_reads_real_getrepo_car() -> None:
    car = read_car((FIXTURES / "devnet-frames" / "getRepo-alice.car").read_bytes())
    assert len(car.roots) == 1
    assert car.roots[0] in car.blocks
    for cid, data in car.blocks.items():
        assert bytes(cid)[4:] == hashlib.sha256(data).digest()


def test_roundtrip_keeps_raw_bytes() -> None:
    car = read_car(write_car([A[0]], [A, B]))
    assert car.roots == [A[0]]
    assert car.blocks == {A[0]: A[1], B[0]: B[1]}


def test_duplicates_extra_roots_and_raw_blocks_are_tolerated() -> None:
    raw = CID.cidv1_raw_sha256_32_from(b"blob bytes")
    car = read_car(write_car([A[0], B[0]], [A, A, B, (raw, b"blob bytes")]))
    assert car.roots == [A[0], B[0]]
    assert car.blocks[raw] == b"blob bytes"
    assert len(car.blocks) == 3


def test_hash_mismatch() -> None:
    data = write_car([A[0]], [A, B])
    with pytest.raises(CarError) as e:
        read_car(replace_block(data, B[0], encode_dag_cbor({"b": "tampered"})))
    assert e.value.reason == "hash_mismatch"


def test_truncated_section() -> None:
    data = write_car([A[0]], [A, B])
    for cut in (1, 5, len(B[1]) + 10):
        with pytest.raises(CarError) as e:
            read_car(data[:-cut])
        assert e.value.reason == "bad_car"


def test_empty_input_and_truncated_varint() -> None:
    for data in (b"", b"\x80", b"\xff\xff"):
        with pytest.raises(CarError) as e:
            read_car(data)
        assert e.value.reason == "bad_car"


def test_huge_varint_rejected() -> None:
    data = write_car([A[0]], [A]) + b"\xff\xff\xff\xff\x7f"
    with pytest.raises(CarError, match="varint too large"):
        read_car(data)


@pytest.mark.parametrize(
    "header",
    [
        {"version": 2, "roots": [A[0]]},
        {"version": True, "roots": [A[0]]},
        {"version": 1, "roots": []},
        {"version": 1, "roots": ["bafy"]},
        {"version": 1},
        [1, [A[0]]],
    ],
)
def test_bad_headers(header: object) -> None:
    with pytest.raises(CarError) as e:
        read_car(_header(header) + write_car([A[0]], [A])[len(_header({"version": 1, "roots": [A[0]]})) :])
    assert e.value.reason == "bad_car"


def test_header_not_cbor() -> None:
    with pytest.raises(CarError) as e:
        read_car(b"\x03\xff\xff\xff")
    assert e.value.reason == "bad_car"


@pytest.mark.parametrize(
    "cid_bytes",
    [
        b"\x12\x20" + hashlib.sha256(A[1]).digest(),  # CIDv0
        b"\x01\x70\x12\x20" + hashlib.sha256(A[1]).digest(),  # dag-pb codec
        b"\x01\x71\x13\x40" + hashlib.sha512(A[1]).digest(),  # sha2-512
    ],
)
def test_unsupported_cid_kinds(cid_bytes: bytes) -> None:
    head = _header({"version": 1, "roots": [A[0]]})
    with pytest.raises(CarError) as e:
        read_car(head + _varint(len(cid_bytes) + len(A[1])) + cid_bytes + A[1])
    assert e.value.reason == "bad_car"


def test_limits() -> None:
    data = write_car([A[0]], [A, B])
    assert len(read_car(data, max_blocks=2).blocks) == 2
    with pytest.raises(CarError, match="more than 1 blocks"):
        read_car(data, max_blocks=1)
    with pytest.raises(CarError, match="larger than 4 bytes"):
        read_car(data, max_block_size=4)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_fuzz_only_car_errors(data: bytes) -> None:
    try:
        read_car(data)
    except CarError:
        pass


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=200), st.binary(min_size=1, max_size=4))
def test_fuzz_corrupted_valid_car(pos: int, junk: bytes) -> None:
    data = write_car([A[0]], [A, B])
    pos %= len(data)
    corrupted = data[:pos] + junk + data[pos + len(junk) :]
    try:
        car = read_car(corrupted)
    except CarError:
        return
    for cid, block in car.blocks.items():  # whatever got through must still hash correctly
        assert bytes(cid)[4:] == hashlib.sha256(block).digest()
