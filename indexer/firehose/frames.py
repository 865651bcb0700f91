"""Firehose (``com.atproto.sync.subscribeRepos``) websocket messages -> typed events.

A message is two concatenated DAG-CBOR objects: a header ``{op, t}`` and a body. libipld
decodes both in one call (it already refuses unsorted or duplicate map keys, non-string keys,
tags other than 42, indefinite lengths, invalid UTF-8 and trailing bytes). This module then
checks every field this service relies on, by exact type (``type(x) is int``, so a bool is not
a seq), so that nothing downstream has to wonder whether ``commit`` might be a string.

CIDs stay as the raw binary CID that libipld returns (``01 71 12 20`` + 32-byte SHA-256 digest
for the dag-cbor links of a repo); ``libipld.encode_cid`` turns one into its ``bafy...`` form.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

from libipld import decode_dag_cbor_multi

from atmx.indexer.repo.syntax import is_did, is_tid

MAX_FRAME_BYTES: Final = 5 * 1024 * 1024  # the websocket frame limit in the event-stream spec
MAX_COMMIT_BLOCKS: Final = 2_000_000  # subscribeRepos lexicon, #commit.blocks maxLength
MAX_SYNC_BLOCKS: Final = 10_000  # subscribeRepos lexicon, #sync.blocks maxLength
MAX_OPS: Final = 200  # subscribeRepos lexicon, #commit.ops maxLength
MAX_PATH: Final = 317 + 1 + 512  # NSID + "/" + record key
MAX_SEQ: Final = 2**63 - 1  # stored as PostgreSQL bigint

_ACTIONS: Final = frozenset(("create", "update", "delete"))
# Every CID in a commit message links a dag-cbor block hashed with sha2-256.
_CBOR_CID_PREFIX: Final = b"\x01\x71\x12\x20"
_CBOR_CID_LEN: Final = 36


class FrameError(ValueError):
    """A message that is not a well-formed firehose event.

    ``reason`` is one of ``bad_cbor``, ``bad_header``, ``missing_field``, ``bad_field``,
    ``too_large``. The first two and the last mean the stream itself is broken (the spec says
    to drop the connection); the field reasons mean one event is malformed. ``seq`` is set when
    the body carried a usable sequence number, so a caller that chooses to skip a malformed
    event can still move its cursor past it.
    """

    def __init__(self, reason: str, message: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.seq = seq


@dataclass(frozen=True, slots=True)
class RepoOp:
    action: str  # "create" | "update" | "delete"
    path: str  # "<collection>/<rkey>"
    cid: bytes | None  # new record CID; None for delete
    prev: bytes | None  # previous record CID; None for create (or legacy producers)


@dataclass(frozen=True, slots=True)
class CommitEvent:
    seq: int
    repo: str
    rev: str
    since: str | None
    commit: bytes
    blocks: bytes  # CAR v1 diff
    ops: tuple[RepoOp, ...]
    prev_data: bytes | None
    time: str
    too_big: bool
    rebase: bool


@dataclass(frozen=True, slots=True)
class SyncEvent:
    seq: int
    did: str
    rev: str
    blocks: bytes  # CAR v1 holding only the signed commit block
    time: str


@dataclass(frozen=True, slots=True)
class IdentityEvent:
    seq: int
    did: str
    time: str
    handle: str | None


@dataclass(frozen=True, slots=True)
class AccountEvent:
    seq: int
    did: str
    time: str
    active: bool
    status: str | None


@dataclass(frozen=True, slots=True)
class InfoEvent:
    name: str
    message: str | None


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    error: str
    message: str | None


@dataclass(slots=True)  # not frozen: built for nearly every message, and frozen init costs twice as much
class SkippedEvent:
    """An event about nothing atmx indexes (see prefilter.py): only its seq moves the cursor."""

    seq: int
    time: str | None  # as sent, unchecked: used only for the lag gauge


@dataclass(frozen=True, slots=True)
class MalformedEvent:
    """A well-framed event of a repo atmx indexes whose fields are malformed (prefilter.py).

    Its content cannot be used; the cursor moves past it, and the repo (when the event named
    a valid DID) is re-fetched with proof so that nothing it may have changed is lost.
    """

    seq: int
    did: str | None
    reason: str  # FrameError reason: missing_field | bad_field
    message: str


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """A message type (or op) this code does not know: ignore it, but let the cursor move."""

    t: str
    seq: int | None


Event = (
    CommitEvent
    | SyncEvent
    | IdentityEvent
    | AccountEvent
    | InfoEvent
    | ErrorEvent
    | UnknownEvent
    | SkippedEvent
    | MalformedEvent
)


def decode_frame(data: bytes) -> Event:
    """Decode one websocket binary message; raises FrameError on anything malformed."""
    op, t, body = split_message(data)
    return parse_event(op, t, body)


def split_message(data: bytes) -> tuple[int, str | None, dict[str, Any]]:
    """The header's `op` and `t`, and the body map; FrameError when the framing is broken."""
    if len(data) > MAX_FRAME_BYTES:
        raise FrameError("too_large", f"frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        objects = decode_dag_cbor_multi(data)
    except Exception as exc:  # libipld raises ValueError, RecursionError, OverflowError...
        raise FrameError("bad_cbor", f"invalid DAG-CBOR: {exc}") from None
    if type(objects) is not list or len(objects) != 2:
        count = len(objects) if type(objects) is list else "?"
        raise FrameError("bad_header", f"expected header + body, got {count} objects")
    header, body = objects
    if type(header) is not dict:
        raise FrameError("bad_header", "header is not a map")
    op = header.get("op")
    if type(op) is not int:
        raise FrameError("bad_header", "header op is missing or not an integer")
    t = header.get("t")
    if op == 1:
        if type(t) is not str:
            raise FrameError("bad_header", "header t is missing or not a string")
    elif t is not None and type(t) is not str:
        raise FrameError("bad_header", "header t is not a string")
    if type(body) is not dict:
        raise FrameError("bad_field", "body is not a map")
    return op, t, body


def parse_event(op: int, t: str | None, body: dict[str, Any]) -> Event:
    """The typed event of a split message, every field checked; FrameError when one is malformed."""
    if op == -1:
        return ErrorEvent(_str(body, "error"), _opt_str(body, "message"))
    parse = _PARSERS.get(t) if op == 1 else None
    if parse is None:
        return UnknownEvent(t or "", _loose_seq(body))
    try:
        return parse(body)
    except FrameError as exc:
        exc.seq = _loose_seq(body)
        raise


def event_did(ev: Event) -> str | None:
    """The account an event is about (``repo`` for #commit, ``did`` otherwise)."""
    if isinstance(ev, CommitEvent):
        return ev.repo
    if isinstance(ev, SyncEvent | IdentityEvent | AccountEvent | MalformedEvent):
        return ev.did
    return None


def event_seq(ev: Event) -> int | None:
    """The stream sequence number; None for #info, errors and unknown events without one."""
    if isinstance(ev, InfoEvent | ErrorEvent):
        return None
    return ev.seq


# ---------------------------------------------------------------------------------------------
# body parsers (one per message type) and field helpers


def _parse_commit(body: dict[str, Any]) -> CommitEvent:
    blocks = _bytes(body, "blocks")
    if len(blocks) > MAX_COMMIT_BLOCKS:
        raise FrameError("bad_field", f"#commit blocks of {len(blocks)} bytes exceed {MAX_COMMIT_BLOCKS}")
    raw_ops = body.get("ops")
    if type(raw_ops) is not list:
        raise _missing_or_bad(body, "ops", "an array")
    if len(raw_ops) > MAX_OPS:
        raise FrameError("bad_field", f"#commit has {len(raw_ops)} ops, more than {MAX_OPS}")
    since = body.get("since", _MISSING)
    if since is _MISSING:
        raise FrameError("missing_field", "#commit lacks since")
    if since is not None and not is_tid(since):
        raise FrameError("bad_field", "since is not a TID")
    return CommitEvent(
        seq=_seq(body),
        repo=_did(body, "repo"),
        rev=_tid(body, "rev"),
        since=since,
        commit=_cid(body, "commit"),
        blocks=blocks,
        ops=tuple(map(_repo_op, raw_ops)),
        prev_data=_opt_cid(body, "prevData"),
        time=_str(body, "time"),
        too_big=_deprecated_bool(body, "tooBig"),
        rebase=_deprecated_bool(body, "rebase"),
    )


def _repo_op(raw: object) -> RepoOp:
    if type(raw) is not dict:
        raise FrameError("bad_field", "repo op is not a map")
    action = raw.get("action")
    if type(action) is not str or action not in _ACTIONS:  # str first: a list is unhashable
        raise _missing_or_bad(raw, "action", "create, update or delete")
    path = raw.get("path")
    if type(path) is not str or not 3 <= len(path) <= MAX_PATH or "/" not in path:
        raise _missing_or_bad(raw, "path", "a <collection>/<rkey> string")
    if "cid" not in raw:  # required, but nullable (null for deletes)
        raise FrameError("missing_field", "repo op lacks cid")
    return RepoOp(action, path, _opt_cid(raw, "cid"), _opt_cid(raw, "prev"))


def _parse_sync(body: dict[str, Any]) -> SyncEvent:
    blocks = _bytes(body, "blocks")
    if len(blocks) > MAX_SYNC_BLOCKS:
        raise FrameError("bad_field", f"#sync blocks of {len(blocks)} bytes exceed {MAX_SYNC_BLOCKS}")
    return SyncEvent(_seq(body), _did(body, "did"), _tid(body, "rev"), blocks, _str(body, "time"))


def _parse_identity(body: dict[str, Any]) -> IdentityEvent:
    return IdentityEvent(_seq(body), _did(body, "did"), _str(body, "time"), _opt_str(body, "handle"))


def _parse_account(body: dict[str, Any]) -> AccountEvent:
    active = body.get("active")
    if type(active) is not bool:
        raise _missing_or_bad(body, "active", "a boolean")
    return AccountEvent(_seq(body), _did(body, "did"), _str(body, "time"), active, _opt_str(body, "status"))


def _parse_info(body: dict[str, Any]) -> InfoEvent:
    return InfoEvent(_str(body, "name"), _opt_str(body, "message"))


_PARSERS: Final[dict[object, Callable[[dict[str, Any]], Event]]] = {
    "#commit": _parse_commit,
    "#sync": _parse_sync,
    "#identity": _parse_identity,
    "#account": _parse_account,
    "#info": _parse_info,
}

_MISSING: Final = object()


def _missing_or_bad(body: dict[str, Any], key: str, expected: str) -> FrameError:
    if body.get(key, _MISSING) is _MISSING:
        return FrameError("missing_field", f"missing field {key}")
    return FrameError("bad_field", f"field {key} is not {expected}")


def _loose_seq(body: dict[str, Any]) -> int | None:
    seq = body.get("seq")
    return seq if type(seq) is int and 0 <= seq <= MAX_SEQ else None


def _seq(body: dict[str, Any]) -> int:
    seq = body.get("seq")
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        raise _missing_or_bad(body, "seq", "an integer in [0, 2^63)")
    return seq


def _str(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if type(value) is not str:
        raise _missing_or_bad(body, key, "a string")
    return value


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and type(value) is not str:
        raise FrameError("bad_field", f"field {key} is not a string")
    return value


def _did(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if type(value) is not str or not is_did(value):
        raise _missing_or_bad(body, key, "a DID")
    return value


def _tid(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if type(value) is not str or not is_tid(value):
        raise _missing_or_bad(body, key, "a TID")
    return value


def _bytes(body: dict[str, Any], key: str) -> bytes:
    value = body.get(key)
    if type(value) is not bytes:
        raise _missing_or_bad(body, key, "bytes")
    return value


def _is_cbor_cid(value: object) -> TypeGuard[bytes]:
    # libipld already validated tag-42 CIDs; this pins the codec and hash atproto repos use.
    return type(value) is bytes and len(value) == _CBOR_CID_LEN and value.startswith(_CBOR_CID_PREFIX)


def _cid(body: dict[str, Any], key: str) -> bytes:
    value = body.get(key)
    if not _is_cbor_cid(value):
        raise _missing_or_bad(body, key, "a dag-cbor sha2-256 CID")
    return value


def _opt_cid(body: dict[str, Any], key: str) -> bytes | None:
    value = body.get(key)
    if value is not None and not _is_cbor_cid(value):
        raise FrameError("bad_field", f"field {key} is not a dag-cbor sha2-256 CID")
    return value


def _deprecated_bool(body: dict[str, Any], key: str) -> bool:
    # tooBig and rebase are deprecated (always false); tolerate producers that drop them.
    value = body.get(key, False)
    if type(value) is not bool:
        raise FrameError("bad_field", f"field {key} is not a boolean")
    return value
