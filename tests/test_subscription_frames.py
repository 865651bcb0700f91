"""api/subscription_frames.py: subscribeBindings messages in the CBOR and the JSON framing."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import libipld

from atmx.api.subscription_frames import (
    JSON_SUBPROTOCOL,
    NSID,
    error_frame,
    event_frame,
    info_frame,
    json_event_frame,
)

TIME = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
BODY = json.dumps({"did": "did:plc:abc", "key": {"$bytes": "AQID"}})


def test_event_in_cbor_framing_turns_atproto_json_back_into_cbor() -> None:
    header, body = libipld.decode_dag_cbor_multi(event_frame("binding", 7, TIME, BODY))
    assert header == {"op": 1, "t": "#binding"}
    assert body == {"did": "did:plc:abc", "key": b"\x01\x02\x03", "seq": 7, "time": "2026-11-01T12:00:00.000Z"}


def test_event_in_json_framing_keeps_the_stored_text() -> None:
    message = json.loads(json_event_frame("binding", 7, TIME, BODY))
    assert message == {
        "$type": "message",
        "payload": {
            "$type": f"{NSID}#binding",
            "seq": 7,
            "time": "2026-11-01T12:00:00.000Z",
            "did": "did:plc:abc",
            "key": {"$bytes": "AQID"},
        },
    }
    empty = json.loads(json_event_frame("tombstone", 8, TIME, "{}"))
    assert empty["payload"] == {"$type": f"{NSID}#tombstone", "seq": 8, "time": "2026-11-01T12:00:00.000Z"}


def test_info_in_both_framings() -> None:
    cbor = info_frame("OutdatedCursor", "the log starts later", json_framing=False)
    assert isinstance(cbor, bytes)
    assert libipld.decode_dag_cbor_multi(cbor) == [
        {"op": 1, "t": "#info"},
        {"name": "OutdatedCursor", "message": "the log starts later"},
    ]
    text = info_frame("OutdatedCursor", None, json_framing=True)
    assert isinstance(text, str)
    assert json.loads(text) == {"$type": "message", "payload": {"$type": f"{NSID}#info", "name": "OutdatedCursor"}}


def test_error_in_both_framings() -> None:
    cbor = error_frame("FutureCursor", "cursor is ahead", json_framing=False)
    assert isinstance(cbor, bytes)
    assert libipld.decode_dag_cbor_multi(cbor) == [{"op": -1}, {"error": "FutureCursor", "message": "cursor is ahead"}]
    text = error_frame("FutureCursor", "cursor is ahead", json_framing=True)
    assert isinstance(text, str)
    assert json.loads(text) == {"$type": "error", "error": "FutureCursor", "message": "cursor is ahead"}


def test_json_subprotocol_name() -> None:
    assert JSON_SUBPROTOCOL == "xrpc.v1.json"
