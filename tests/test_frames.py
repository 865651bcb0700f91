"""Firehose frame decoding: real frames from the reference PDS, and malformed ones."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, cast

import cbrrr
import libipld
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atmx.indexer.firehose.frames import (
    MAX_FRAME_BYTES,
    AccountEvent,
    CommitEvent,
    ErrorEvent,
    Event,
    FrameError,
    IdentityEvent,
    InfoEvent,
    SyncEvent,
    UnknownEvent,
    decode_frame,
    event_did,
    event_seq,
)
from atmx.indexer.records.registry import COLLECTION_PREFIXES

FRAMES = Path(__file__).parent / "fixtures" / "devnet-frames"
INDEX: list[dict[str, Any]] = json.loads((FRAMES / "index.json").read_text())["frames"]
TYPES = {
    "#commit": CommitEvent,
    "#sync": SyncEvent,
    "#identity": IdentityEvent,
    "#account": AccountEvent,
    "#info": InfoEvent,
    None: ErrorEvent,
}


def _raw(name: str) -> bytes:
    return (FRAMES / name).read_bytes()


def _cid_str(cid: bytes | None) -> str | None:
    return None if cid is None else libipld.encode_cid(cid)


def _parts(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and body of a real frame, with CIDs kept as CID objects so they re-encode as links."""
    header, body = cbrrr.decode_multi_dag_cbor_in_violation_of_the_spec(_raw(name))
    return cast(dict[str, Any], header), cast(dict[str, Any], body)


def _frame(header: Any, body: Any) -> bytes:
    return cbrrr.encode_dag_cbor(header) + cbrrr.encode_dag_cbor(body)


def _reason(data: bytes) -> str:
    with pytest.raises(FrameError) as info:
        decode_frame(data)
    return str(info.value.reason)


# ---------------------------------------------------------------------------------------------
# every real frame decodes to what index.json says


def test_index_covers_every_frame() -> None:
    assert sorted(f["file"] for f in INDEX) == sorted(p.name for p in FRAMES.glob("*.bin"))
    assert len(INDEX) == 43


@pytest.mark.parametrize("entry", INDEX, ids=[f["file"] for f in INDEX])
def test_devnet_frame(entry: dict[str, Any]) -> None:
    data = _raw(entry["file"])
    assert len(data) == entry["bytes"]
    ev = decode_frame(data)
    assert type(ev) is TYPES[entry["type"]]
    if isinstance(ev, CommitEvent):
        assert ev.seq == entry["seq"]
        assert ev.repo == entry["repo"]
        assert ev.rev == entry["rev"]
        assert ev.since == entry["since"]
        assert ev.time == entry["time"]
        assert _cid_str(ev.commit) == entry["commit"]
        assert _cid_str(ev.prev_data) == entry["prevData"]
        assert ev.too_big is entry["tooBig"]
        assert ev.rebase is entry["rebase"]
        assert len(ev.ops) == entry["nOps"]
        # the diff CAR really is there: its header names the commit as root
        assert libipld.decode_car(ev.blocks)[0]["roots"][0] == ev.commit
        # for the 200-op batch, index.json lists the first 3 ops and then {"omitted": 197}
        listed = [op for op in entry["ops"] if "omitted" not in op]
        assert len(listed) + sum(op.get("omitted", 0) for op in entry["ops"]) == len(ev.ops)
        for op, want in zip(ev.ops, listed, strict=False):
            assert (op.action, op.path) == (want["action"], want["path"])
            assert _cid_str(op.cid) == want["cid"]
            assert _cid_str(op.prev) == want.get("prev")
    elif isinstance(ev, SyncEvent):
        assert (ev.seq, ev.did, ev.rev, ev.time) == (entry["seq"], entry["did"], entry["rev"], entry["time"])
        assert _cid_str(libipld.decode_car(ev.blocks)[0]["roots"][0]) == entry["carRoots"][0]
    elif isinstance(ev, IdentityEvent):
        assert (ev.seq, ev.did, ev.time, ev.handle) == (
            entry["seq"],
            entry["did"],
            entry["time"],
            entry["handle"],
        )
    elif isinstance(ev, AccountEvent):
        assert (ev.seq, ev.did, ev.time) == (entry["seq"], entry["did"], entry["time"])
        assert ev.active is entry["active"]
        assert ev.status == entry.get("status")
    elif isinstance(ev, InfoEvent):
        assert (ev.name, ev.message) == (entry["name"], entry["message"])
    else:
        assert isinstance(ev, ErrorEvent)
        assert (ev.error, ev.message) == (entry["error"]["error"], entry["error"]["message"])


def test_helpers_on_real_frames() -> None:
    by_file = {e["file"]: decode_frame(_raw(e["file"])) for e in INDEX}
    relevant = {
        f
        for f, ev in by_file.items()
        if isinstance(ev, CommitEvent) and any(op.path.startswith(COLLECTION_PREFIXES) for op in ev.ops)
    }
    # xmtp creates (17-20), didcomm creates (21-23), the update (28), the delete (29),
    # the batched commit (31) and the 200-op batch (43)
    assert relevant == {
        f for f in by_file if f[:2] in {"17", "18", "19", "20", "21", "22", "23", "28", "29", "31", "43"}
    }
    for entry in INDEX:
        ev = by_file[entry["file"]]
        assert event_seq(ev) == entry.get("seq")
        assert event_did(ev) == entry.get("repo", entry.get("did"))


def test_events_are_frozen() -> None:
    ev = decode_frame(_raw("17-live-seq0017-commit.bin"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(ev, "seq", 5)  # noqa: B010
    assert not hasattr(ev, "__dict__")


# ---------------------------------------------------------------------------------------------
# framing errors


def test_garbage_and_empty() -> None:
    assert _reason(b"\xff\xfe\xfd") == "bad_cbor"
    assert _reason(b"") == "bad_header"
    assert _reason(b"\x1c") == "bad_cbor"  # reserved additional info


def test_truncated_frames() -> None:
    data = _raw("31-live-seq0031-commit.bin")
    header_len = len(libipld.encode_dag_cbor({"op": 1, "t": "#commit"}))
    for cut in range(1, len(data), 7):
        expected = {"bad_header"} if cut == header_len else {"bad_cbor"}
        assert _reason(data[:cut]) in expected, cut


def test_object_count() -> None:
    header, body = _parts("01-live-seq0001-identity.bin")
    assert _reason(cbrrr.encode_dag_cbor(header)) == "bad_header"
    assert _reason(_frame(header, body) + cbrrr.encode_dag_cbor(body)) == "bad_header"


def test_too_large() -> None:
    assert _reason(b"\0" * (MAX_FRAME_BYTES + 1)) == "too_large"
    # a body just under the frame limit is judged on its fields instead
    header, body = _parts("17-live-seq0017-commit.bin")
    body["blocks"] = b"\0" * 2_000_001
    assert _reason(_frame(header, body)) == "bad_field"


def test_non_canonical_cbor_is_rejected() -> None:
    # map keys out of canonical order
    assert _reason(b"\xa2\x62op\x01\x61t\x67#commit" + cbrrr.encode_dag_cbor({})) == "bad_cbor"


@pytest.mark.parametrize(
    "header",
    [
        [1, "#commit"],
        {"t": "#commit"},
        {"op": "1", "t": "#commit"},
        {"op": True, "t": "#commit"},
        {"op": 1},
        {"op": 1, "t": 7},
        {"op": -1, "t": b"#x"},
    ],
)
def test_bad_headers(header: object) -> None:
    _, body = _parts("01-live-seq0001-identity.bin")
    assert _reason(_frame(header, body)) == "bad_header"


def test_body_must_be_a_map() -> None:
    assert _reason(_frame({"op": 1, "t": "#identity"}, [1, 2])) == "bad_field"


# ---------------------------------------------------------------------------------------------
# field errors

_CID_RAW_CODEC = cbrrr.CID(b"\x01\x55\x12\x20" + b"\1" * 32)

FIELD_CASES: list[tuple[str, str, object, str]] = [
    # (frame, field, new value or DELETE, reason)
    ("17-live-seq0017-commit.bin", "seq", "DELETE", "missing_field"),
    ("17-live-seq0017-commit.bin", "seq", True, "bad_field"),
    ("17-live-seq0017-commit.bin", "seq", -1, "bad_field"),
    ("17-live-seq0017-commit.bin", "seq", 2**63, "bad_field"),
    ("17-live-seq0017-commit.bin", "seq", "17", "bad_field"),
    ("17-live-seq0017-commit.bin", "repo", "DELETE", "missing_field"),
    ("17-live-seq0017-commit.bin", "repo", "alice.test", "bad_field"),
    ("17-live-seq0017-commit.bin", "rev", "3n2ve3cnqbc2", "bad_field"),
    ("17-live-seq0017-commit.bin", "since", "DELETE", "missing_field"),
    ("17-live-seq0017-commit.bin", "since", "yesterday", "bad_field"),
    ("17-live-seq0017-commit.bin", "commit", "DELETE", "missing_field"),
    (
        "17-live-seq0017-commit.bin",
        "commit",
        "bafyreifpeuacznkylekdp32riejo2cpad4wya2dxitusu7v3ixhh5xm47q",
        "bad_field",
    ),
    ("17-live-seq0017-commit.bin", "commit", _CID_RAW_CODEC, "bad_field"),
    ("17-live-seq0017-commit.bin", "commit", None, "bad_field"),
    ("17-live-seq0017-commit.bin", "blocks", "DELETE", "missing_field"),
    ("17-live-seq0017-commit.bin", "blocks", "car", "bad_field"),
    ("17-live-seq0017-commit.bin", "ops", "DELETE", "missing_field"),
    ("17-live-seq0017-commit.bin", "ops", {}, "bad_field"),
    ("17-live-seq0017-commit.bin", "ops", ["org.xmtp.inbox/self"], "bad_field"),
    (
        "17-live-seq0017-commit.bin",
        "ops",
        [{"action": "create", "path": "a/b", "cid": None}] * 201,
        "bad_field",
    ),
    ("17-live-seq0017-commit.bin", "prevData", b"\1\2\3", "bad_field"),
    ("17-live-seq0017-commit.bin", "time", "DELETE", "missing_field"),
    ("17-live-seq0017-commit.bin", "time", 1700000000, "bad_field"),
    ("17-live-seq0017-commit.bin", "tooBig", 0, "bad_field"),
    ("17-live-seq0017-commit.bin", "rebase", "false", "bad_field"),
    ("04-live-seq0004-sync.bin", "blocks", b"\0" * 10_001, "bad_field"),
    ("04-live-seq0004-sync.bin", "did", "DELETE", "missing_field"),
    ("04-live-seq0004-sync.bin", "rev", None, "bad_field"),
    ("01-live-seq0001-identity.bin", "handle", 5, "bad_field"),
    ("01-live-seq0001-identity.bin", "did", "did:PLC:abc", "bad_field"),
    ("02-live-seq0002-account.bin", "active", "DELETE", "missing_field"),
    ("02-live-seq0002-account.bin", "active", 1, "bad_field"),
    ("02-live-seq0002-account.bin", "status", ["deleted"], "bad_field"),
    ("42-outdated-cursor-info.bin", "name", "DELETE", "missing_field"),
    ("42-outdated-cursor-info.bin", "message", b"bytes", "bad_field"),
    ("41-future-cursor-error.bin", "error", "DELETE", "missing_field"),
    ("41-future-cursor-error.bin", "message", 3, "bad_field"),
]


@pytest.mark.parametrize(("name", "field", "value", "reason"), FIELD_CASES)
def test_bad_fields(name: str, field: str, value: object, reason: str) -> None:
    header, body = _parts(name)
    assert field in body or value == "DELETE" or field in ("status", "prevData"), "test case drifted"
    if value == "DELETE":
        del body[field]
    else:
        body[field] = value
    with pytest.raises(FrameError) as info:
        decode_frame(_frame(header, body))
    assert info.value.reason == reason
    # a malformed event still reports its seq when it had a usable one
    seq = body.get("seq")
    expected_seq = seq if type(seq) is int and 0 <= seq < 2**63 else None
    assert info.value.seq == expected_seq


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"action": "upsert"}, "bad_field"),
        ({"action": None}, "bad_field"),
        ({"action": ["create"]}, "bad_field"),
        ({"action": {"create": 1}}, "bad_field"),
        ({"path": ["a/b"]}, "bad_field"),
        ({"path": "no-slash"}, "bad_field"),
        ({"path": 5}, "bad_field"),
        ({"cid": "DELETE"}, "missing_field"),
        ({"cid": 7}, "bad_field"),
        ({"prev": "bafy"}, "bad_field"),
        ({"action": "DELETE"}, "missing_field"),
    ],
)
def test_bad_repo_ops(change: dict[str, object], reason: str) -> None:
    header, body = _parts("28-live-seq0028-commit.bin")
    op = body["ops"][0]
    for key, value in change.items():
        if value == "DELETE":
            del op[key]
        else:
            op[key] = value
    with pytest.raises(FrameError) as info:
        decode_frame(_frame(header, body))
    assert info.value.reason == reason
    assert info.value.seq == 28


def test_deprecated_flags_default_to_false_and_extra_fields_are_ignored() -> None:
    header, body = _parts("17-live-seq0017-commit.bin")
    del body["tooBig"], body["rebase"], body["blobs"]
    body["somethingNew"] = {"x": [1, 2]}
    ev = decode_frame(_frame(header, body))
    assert isinstance(ev, CommitEvent)
    assert ev.too_big is False and ev.rebase is False
    assert ev.seq == 17


def test_delete_op_with_null_cid_and_prev() -> None:
    ev = decode_frame(_raw("29-live-seq0029-commit.bin"))
    assert isinstance(ev, CommitEvent)
    (op,) = ev.ops
    assert op.action == "delete" and op.cid is None and op.prev is not None


# ---------------------------------------------------------------------------------------------
# unknown types and ops are skipped, keeping the seq


def test_unknown_type_keeps_seq() -> None:
    ev = decode_frame(_frame({"op": 1, "t": "#handle"}, {"seq": 99, "did": "did:plc:x", "handle": "a.test"}))
    assert ev == UnknownEvent("#handle", 99)
    assert event_seq(ev) == 99 and event_did(ev) is None


def test_unknown_type_without_usable_seq() -> None:
    assert decode_frame(_frame({"op": 1, "t": "#future"}, {"seq": "x"})) == UnknownEvent("#future", None)


def test_unknown_op() -> None:
    assert decode_frame(_frame({"op": 2, "t": "#commit"}, {"seq": 5})) == UnknownEvent("#commit", 5)
    assert decode_frame(_frame({"op": 7}, {})) == UnknownEvent("", None)


def test_error_frame_without_message() -> None:
    assert decode_frame(_frame({"op": -1}, {"error": "ConsumerTooSlow"})) == ErrorEvent("ConsumerTooSlow", None)


# ---------------------------------------------------------------------------------------------
# fuzzing: nothing but FrameError ever escapes


def _decode_or_frame_error(data: bytes) -> Event | None:
    try:
        return decode_frame(data)
    except FrameError as exc:
        assert exc.reason in {"bad_cbor", "bad_header", "missing_field", "bad_field", "too_large"}
        return None


@settings(max_examples=500)
@given(st.binary(max_size=512))
def test_arbitrary_bytes(data: bytes) -> None:
    _decode_or_frame_error(data)


@settings(max_examples=300)
@given(st.binary(max_size=64), st.integers(0, 1300))
def test_corrupted_real_frames(patch: bytes, at: int) -> None:
    data = bytearray(_raw("31-live-seq0031-commit.bin"))
    data[at : at + len(patch)] = patch
    _decode_or_frame_error(bytes(data))


_cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.text(max_size=20)
    | st.binary(max_size=40)
    | st.sampled_from([b"\x01\x71\x12\x20" + b"\7" * 32, "did:plc:abc", "3n2ve3cnqbc2t", "create", "a/b"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["seq", "repo", "did", "rev", "since", "commit", "blocks", "ops", "action", "path", "cid"]),
            inner,
            max_size=6,
        )
    ),
    max_leaves=12,
)
_FIELDS = "seq repo did rev since commit blocks ops prevData time handle active status name message error"
_field_names = st.sampled_from([*_FIELDS.split(), "tooBig", "rebase"])


@settings(max_examples=200)
@given(
    op=st.sampled_from([1, -1, 0, 2]),
    t=st.sampled_from(["#commit", "#sync", "#identity", "#account", "#info", "#other"]),
    body=st.dictionaries(_field_names, _cbor_values, max_size=8),
)
def test_structured_fuzz(op: int, t: str, body: dict[str, object]) -> None:
    _decode_or_frame_error(libipld.encode_dag_cbor({"op": op, "t": t}) + libipld.encode_dag_cbor(body))


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(["action", "path", "cid", "prev", "x"]), _cbor_values, max_size=5))
def test_mutated_repo_ops(op: dict[str, object]) -> None:
    header, body = _parts("28-live-seq0028-commit.bin")
    body["ops"] = [body["ops"][0], op]
    _decode_or_frame_error(_frame(header, body))


@settings(max_examples=200)
@given(st.data())
def test_mutated_real_bodies(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from([e["file"] for e in INDEX if e["bytes"] < 5000]))
    header, body = _parts(name)
    key = data.draw(st.sampled_from(sorted(body)))
    body[key] = data.draw(_cbor_values)
    _decode_or_frame_error(_frame(header, body))
