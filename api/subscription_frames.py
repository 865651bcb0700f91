"""Frames of `directory.atmx.subscribeBindings`, in both framings (pure).

- Default (`xrpc.v0.cbor`, as `com.atproto.sync.subscribeRepos`): one binary websocket message
  per event, a DAG-CBOR header `{op: 1, t: "#<kind>"}` followed by the DAG-CBOR body; an error
  is `{op: -1}` followed by `{error, message}`, and the connection closes.
- `xrpc.v1.json` (atproto proposal 0015, as Jetstream v2): one text message per event,
  `{"$type": "message", "payload": {"$type": "directory.atmx.subscribeBindings#<kind>", ...}}`,
  or `{"$type": "error", "error": ..., "message": ...}`.

Bodies are kept in the atproto JSON form (`{"$bytes": ...}` for bytes); the CBOR framing turns
them back into DAG-CBOR bytes and links, as atproto's JSON and CBOR forms of one value are.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Final

import libipld
from cbrrr import encode_dag_cbor

from atmx.indexer.records.stored import iso_time

__all__ = ["JSON_SUBPROTOCOL", "NSID", "error_frame", "event_frame", "info_frame", "json_event_frame"]

NSID: Final = "directory.atmx.subscribeBindings"
JSON_SUBPROTOCOL: Final = "xrpc.v1.json"


def _cbor_frame(header: dict[str, Any], body: dict[str, Any]) -> bytes:
    return bytes(encode_dag_cbor(header)) + bytes(encode_dag_cbor(body, atjson_mode=True))


_HEADERS: Final = {
    kind: bytes(encode_dag_cbor({"op": 1, "t": f"#{kind}"})) for kind in ("binding", "account", "handle")
}


def event_frame(kind: str, seq: int, time: datetime, body_json: str) -> bytes:
    """A `#<kind>` message in the CBOR framing; `body_json` is the stored body (JSON text)."""
    body = json.loads(body_json)
    body["seq"] = seq
    body["time"] = iso_time(time)
    header = _HEADERS.get(kind) or bytes(encode_dag_cbor({"op": 1, "t": f"#{kind}"}))
    if '"$bytes"' in body_json or '"$link"' in body_json:
        return header + bytes(encode_dag_cbor(body, atjson_mode=True))  # bytes and links back to DAG-CBOR
    return header + bytes(libipld.encode_dag_cbor(body))


def json_event_frame(kind: str, seq: int, time: datetime, body_json: str) -> str:
    """The same message in the JSON framing, built from the stored text without re-encoding it."""
    inner = body_json.strip()
    head = f'{{"$type":"{NSID}#{kind}","seq":{seq},"time":"{iso_time(time)}"'
    payload = head + ("}" if inner == "{}" else "," + inner[1:])
    return '{"$type":"message","payload":' + payload + "}"


def info_frame(name: str, message: str | None, *, json_framing: bool) -> bytes | str:
    body: dict[str, Any] = {"name": name}
    if message is not None:
        body["message"] = message
    if json_framing:
        return json.dumps({"$type": "message", "payload": {"$type": f"{NSID}#info", **body}})
    return _cbor_frame({"op": 1, "t": "#info"}, body)


def error_frame(error: str, message: str, *, json_framing: bool) -> bytes | str:
    if json_framing:
        return json.dumps({"$type": "error", "error": error, "message": message})
    return _cbor_frame({"op": -1}, {"error": error, "message": message})
