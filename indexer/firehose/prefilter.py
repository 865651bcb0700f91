"""The firehose pre-filter: websocket message bytes in, typed events out, full decoding only
for what atmx may index. Pure, no I/O.

Nearly every event on the network is a like, a post or a follow of an account atmx has never
seen. Those cost one libipld decode and a look at the op paths, and come out as a
`SkippedEvent` (seq and time, for the cursor). Full parsing with every field checked
(frames.parse_event) is kept for:

- a `#commit` with an op under `org.xmtp.inbox/` or `at.didcomm.keyPackage/`;
- every `#commit` of a repo `wanted` reports (indexed, or with work in flight): each one is
  verified, so that a relay cannot hide a change to an indexed record in an unrelated commit;
- `#identity`, `#account` and `#sync` of a wanted repo;
- `#info`, error frames and message types this code does not know.

Broken framing (not DAG-CBOR, no header) raises FrameError as frames.split_message does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, Final

from atmx.indexer.firehose.frames import (
    MAX_SEQ,
    Event,
    FrameError,
    MalformedEvent,
    SkippedEvent,
    UnknownEvent,
    parse_event,
    split_message,
)
from atmx.indexer.records.registry import COLLECTION_PREFIXES
from atmx.indexer.repo.syntax import is_did

_PREFIXES: Final = COLLECTION_PREFIXES
_DID_EVENTS: Final = {"#identity": "identity", "#account": "account", "#sync": "sync"}
_KINDS: Final = {"#commit": "commit", "#info": "info", **_DID_EVENTS}


class Prefilter:
    def __init__(self, wanted: Callable[[str], bool]) -> None:
        self.wanted = wanted
        self.counts: Counter[str] = Counter()  # messages by type, for atmx_firehose_events_total

    def decode(self, data: bytes) -> Event:
        op, t, body = split_message(data)
        if op != 1:
            self.counts["error" if op == -1 else "unknown"] += 1
            return parse_event(op, t, body)
        if t == "#commit":
            self.counts["commit"] += 1
            if touches_indexed_collections(body.get("ops")):
                return _checked(parse_event, op, t, body, "repo")
            repo = body.get("repo")
            if type(repo) is str and self.wanted(repo):
                return _checked(parse_event, op, t, body, "repo")
            return _skipped(t, body)
        if t in _DID_EVENTS:
            self.counts[_DID_EVENTS[t]] += 1
            did = body.get("did")
            if type(did) is str and self.wanted(did):
                return _checked(parse_event, op, t, body, "did")
            return _skipped(t, body)
        self.counts[_KINDS.get(t or "", "unknown")] += 1
        return parse_event(op, t, body)


def touches_indexed_collections(ops: object) -> bool:
    """Whether a raw `ops` array holds a path under an indexed collection (shape unchecked here)."""
    if type(ops) is not list:
        return False
    for op in ops:
        if type(op) is dict:
            path = op.get("path")
            if type(path) is str and path.startswith(_PREFIXES):
                return True
    return False


def _checked(
    parse: Callable[[int, str | None, dict[str, Any]], Event], op: int, t: str | None, body: dict[str, Any], key: str
) -> Event:
    """Parse an event atmx needs; one with malformed fields becomes a MalformedEvent, not a broken stream."""
    try:
        return parse(op, t, body)
    except FrameError as exc:
        seq = body.get("seq")
        if exc.reason not in ("missing_field", "bad_field") or type(seq) is not int or not 0 <= seq <= MAX_SEQ:
            raise  # without a seq there is nothing to move past: treat it as a broken stream
        did = body.get(key)
        return MalformedEvent(seq, did if is_did(did) else None, exc.reason, str(exc))


def _skipped(t: str, body: dict[str, object]) -> SkippedEvent | UnknownEvent:
    seq = body.get("seq")
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        return UnknownEvent(t, None)  # nothing to move the cursor to
    time = body.get("time")
    return SkippedEvent(seq, time if type(time) is str else None)


__all__ = ["Prefilter", "touches_indexed_collections"]
