"""A relay that lies: a websocket `subscribeRepos` server in front of the devnet PDS's firehose.

Per client connection it opens the PDS's firehose (passing the cursor through), decodes each
message into a `Frame`, hands it to a pluggable `Strategy` that may drop, change, duplicate,
hold back or reorder events, and re-encodes and forwards what the strategy returns.

Nothing a relay can change is covered by the repo signature: a commit's op list, `prevData`,
`since`, the seq and the order of events. The commit block (and so `rev` and the MST root) and
the CAR blocks are signed, so the strategies here never touch them: a forged signature is
another test tier.

Seqs: the relay numbers its own stream, as a real relay does. An event the PDS sent with seq
`n` goes out as `n * SEQ_SCALE + i` (`i` counts the frames sent since `n` arrived), so extra
frames (a replay, a duplicate, a released one) get fresh, strictly increasing seqs, and a
client's cursor maps back to the PDS's (`cursor // SEQ_SCALE`). A strategy that wants a frame
to keep its original seq (an exact re-send) sets `Frame.keep_seq`.

    async with HostileRelay(devnet.firehose_url) as relay:
        relay.strategy = EditCommits(did, has_op(XMTP_PATH, "delete"), drop_op(XMTP_PATH, "delete"))
        settings = Settings(relay=relay.url, ...)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import parse_qs, urlsplit

import asyncpg
import libipld
from cbrrr import CID
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from devnet_harness import PdsClient, XrpcError, now_iso
from prometheus_client import REGISTRY
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from atmx.indexer.backfill.job import Backfiller
from atmx.indexer.index.writes import WriteSet
from atmx.indexer.repo.car import read_car
from atmx.indexer.repo.commit import decode_commit
from atmx.indexer.repo.crypto import encode_base58btc
from atmx.indexer.repo.mst import MstOp, MstView
from atmx.indexer.store import queries

__all__ = [
    "KEY_PACKAGE",
    "KEY_PACKAGE_PATH",
    "SEQ_SCALE",
    "XMTP",
    "XMTP_PATH",
    "Delay",
    "Duplicate",
    "EditCommits",
    "Frame",
    "HideCommit",
    "HostileRelay",
    "Isolate",
    "RepairGate",
    "Replay",
    "Strategy",
    "SwapAdjacent",
    "atmx_bindings",
    "drop_op",
    "forge_prev_data",
    "gate_repairs",
    "has_op",
    "inverted_prev_data",
    "keypackage_record",
    "metric",
    "metric_total",
    "pds_truth",
    "poll",
    "set_prev_data",
    "set_since",
    "settled",
    "strip_prev_data",
    "unique_handle",
    "xmtp_record",
]

SUBSCRIBE_PATH: Final = "/xrpc/com.atproto.sync.subscribeRepos"
SEQ_SCALE: Final = 1000
IDLE_AFTER: Final = 0.2  # upstream silence after which a strategy may let go of what it holds

XMTP: Final = "org.xmtp.inbox"
KEY_PACKAGE: Final = "at.didcomm.keyPackage"
XMTP_PATH: Final = f"{XMTP}/self"
KEY_PACKAGE_PATH: Final = f"{KEY_PACKAGE}/self"
INDEXED: Final = (XMTP, KEY_PACKAGE)


# --- frames ---


@dataclass
class Frame:
    """One decoded subscribeRepos message: the header `{op, t}` and the body.

    CIDs are libipld's raw CID bytes, which `libipld.encode_dag_cbor` writes back as links.
    """

    header: dict[str, Any]
    body: dict[str, Any]
    upstream_seq: int | None = None  # the seq the PDS gave this event
    keep_seq: bool = False  # send it with its original seq instead of a fresh one

    @classmethod
    def decode(cls, data: bytes) -> Frame:
        header, body = libipld.decode_dag_cbor_multi(data)
        seq = body.get("seq")
        return cls(header, body, seq if type(seq) is int else None)

    def encode(self) -> bytes:
        return bytes(libipld.encode_dag_cbor(self.header)) + bytes(libipld.encode_dag_cbor(self.body))

    def copy(self) -> Frame:
        body = dict(self.body)
        if isinstance(body.get("ops"), list):
            body["ops"] = [dict(op) for op in body["ops"]]
        return Frame(dict(self.header), body, self.upstream_seq, self.keep_seq)

    @property
    def t(self) -> str | None:
        t = self.header.get("t")
        return t if isinstance(t, str) else None

    @property
    def seq(self) -> int | None:
        seq = self.body.get("seq")
        return seq if type(seq) is int else None

    @property
    def is_commit(self) -> bool:
        return self.t == "#commit"

    @property
    def did(self) -> str | None:
        did = self.body.get("repo" if self.is_commit else "did")
        return did if isinstance(did, str) else None

    @property
    def rev(self) -> str | None:
        rev = self.body.get("rev")
        return rev if isinstance(rev, str) else None

    @property
    def ops(self) -> list[dict[str, Any]]:
        ops = self.body.get("ops")
        return ops if self.is_commit and isinstance(ops, list) else []

    def has_op(self, path: str, action: str | None = None) -> bool:
        return any(op.get("path") == path and (action is None or op.get("action") == action) for op in self.ops)

    def indexed_ops(self) -> list[tuple[str, str]]:
        """(action, path) of the ops under an indexed collection."""
        return [(op["action"], op["path"]) for op in self.ops if op["path"].split("/")[0] in INDEXED]


FrameMatch = Callable[[Frame], bool]
FrameEdit = Callable[[Frame], Frame]


def has_op(path: str, action: str | None = None) -> FrameMatch:
    return lambda frame: frame.has_op(path, action)


# --- edits of one commit (each returns the edited copy) ---


def drop_op(path: str, action: str | None = None) -> FrameEdit:
    """Remove an op from the op list; the signed commit and the CAR stay as they were."""

    def edit(frame: Frame) -> Frame:
        out = frame.copy()
        out.body["ops"] = [
            op for op in out.ops if not (op["path"] == path and (action is None or op["action"] == action))
        ]
        return out

    return edit


def strip_prev_data(frame: Frame) -> Frame:
    """`prevData` absent, as a legacy producer would send it."""
    out = frame.copy()
    out.body.pop("prevData", None)
    return out


def inverted_prev_data(frame: Frame) -> bytes:
    """The MST root that inverting the frame's ops (as they are now) over its signed tree gives,
    computed the way atmx checks it: a `prevData` that makes the inversion check pass."""
    car = read_car(frame.body["blocks"])
    commit = decode_commit(car.blocks[CID(frame.body["commit"])])
    ops = [
        MstOp(
            action=op["action"],
            path=op["path"],
            cid=None if op.get("cid") is None else CID(op["cid"]),
            prev=None if op.get("prev") is None else CID(op["prev"]),
        )
        for op in frame.ops
    ]
    return bytes(MstView(car.blocks).invert(commit.data, ops))


def forge_prev_data(frame: Frame) -> Frame:
    """The smart liar's `prevData`: whatever the remaining ops invert to."""
    out = frame.copy()
    out.body["prevData"] = inverted_prev_data(out)
    return out


def set_since(rev: str | None) -> FrameEdit:
    def edit(frame: Frame) -> Frame:
        out = frame.copy()
        out.body["since"] = rev
        return out

    return edit


def set_prev_data(cid: bytes | None) -> FrameEdit:
    def edit(frame: Frame) -> Frame:
        out = frame.copy()
        if cid is None:
            out.body.pop("prevData", None)
        else:
            out.body["prevData"] = cid
        return out

    return edit


# --- strategies ---


class Strategy:
    """What the relay does with each event: `edit` returns the frames to send in its place."""

    def edit(self, frame: Frame) -> list[Frame]:
        return [frame]

    def idle(self) -> list[Frame]:
        """Called after IDLE_AFTER seconds without an upstream event: frames to send now."""
        return []


class EditCommits(Strategy):
    """Apply `edits`, in order, to the commits of `did` that `match` (the first `times` of them)."""

    def __init__(self, did: str, match: FrameMatch, *edits: FrameEdit, times: int = 1) -> None:
        self.did = did
        self.match = match
        self.edits = edits
        self.left = times
        self.original: list[Frame] = []  # the commits as the PDS sent them
        self.edited: list[Frame] = []  # and as the relay sent them

    def edit(self, frame: Frame) -> list[Frame]:
        if self.left <= 0 or not frame.is_commit or frame.did != self.did or not self.match(frame):
            return [frame]
        self.left -= 1
        out = frame
        for edit in self.edits:
            out = edit(out)
        self.original.append(frame)
        self.edited.append(out)
        return [out]


class HideCommit(Strategy):
    """Drop the first commit of `did` that `match`es, and make the next commit of `did` look as if
    it followed the one before the hidden commit: its `since` becomes the hidden commit's `since`,
    and with `forge_prev_data` its `prevData` the hidden commit's `prevData` too."""

    def __init__(self, did: str, match: FrameMatch, *, forge_prev_data: bool = False) -> None:
        self.did = did
        self.match = match
        self.forge_prev_data = forge_prev_data
        self.hidden: Frame | None = None
        self.patched: Frame | None = None

    def edit(self, frame: Frame) -> list[Frame]:
        if not frame.is_commit or frame.did != self.did or self.patched is not None:
            return [frame]
        if self.hidden is None:
            if self.match(frame):
                self.hidden = frame
                return []
            return [frame]
        out = set_since(self.hidden.body.get("since"))(frame)
        if self.forge_prev_data:
            out = set_prev_data(self.hidden.body.get("prevData"))(out)
        self.patched = out
        return [out]


class Replay(Strategy):
    """Remember the commits of `did` that `record` matches; after the first event of `did` that
    `after` matches, send them again (fresh seqs, as a relay that re-sends old events would)."""

    def __init__(self, did: str, record: FrameMatch, after: FrameMatch) -> None:
        self.did = did
        self.record = record
        self.after = after
        self.recorded: list[Frame] = []
        self.replayed: list[Frame] = []

    def edit(self, frame: Frame) -> list[Frame]:
        if frame.did != self.did:
            return [frame]
        if frame.is_commit and self.record(frame):
            self.recorded.append(frame)
        if not self.replayed and self.after(frame):
            self.replayed = [f.copy() for f in self.recorded]
            return [frame, *self.replayed]
        return [frame]


class Isolate(Strategy):
    """Drop every event of `did` except those `keep` matches, which are held back until
    `release()` hands them over (for `HostileRelay.inject`)."""

    def __init__(self, did: str, keep: FrameMatch) -> None:
        self.did = did
        self.keep = keep
        self.held: list[Frame] = []
        self.dropped: list[Frame] = []

    def edit(self, frame: Frame) -> list[Frame]:
        if frame.did != self.did:
            return [frame]
        if self.keep(frame):
            self.held.append(frame)
        else:
            self.dropped.append(frame)
        return []

    def release(self) -> list[Frame]:
        out, self.held = self.held, []
        return out


class Delay(Strategy):
    """Hold the first commit of `did` that `match`es and send it right after the next event of
    `did`: two commits of one repo swapped."""

    def __init__(self, did: str, match: FrameMatch) -> None:
        self.did = did
        self.match = match
        self.held: Frame | None = None
        self.done = False

    def edit(self, frame: Frame) -> list[Frame]:
        if self.done or frame.did != self.did:
            return [frame]
        if self.held is None:
            if frame.is_commit and self.match(frame):
                self.held = frame
                return []
            return [frame]
        self.done = True
        return [frame, self.held]


class Duplicate(Strategy):
    """Every event twice: with a fresh seq, or (`same_seq`) as an exact re-send."""

    def __init__(self, *, same_seq: bool = False) -> None:
        self.same_seq = same_seq

    def edit(self, frame: Frame) -> list[Frame]:
        if frame.seq is None:
            return [frame]
        again = frame.copy()
        if self.same_seq:
            frame.keep_seq = again.keep_seq = True
        return [frame, again]


class SwapAdjacent(Strategy):
    """Send events in pairs, the second first: 2, 1, 4, 3, ... (an event left without a partner
    goes out alone once the upstream is idle)."""

    def __init__(self) -> None:
        self.waiting: Frame | None = None
        self.swapped = 0

    def edit(self, frame: Frame) -> list[Frame]:
        if frame.seq is None:
            return [frame]
        if self.waiting is None:
            self.waiting = frame
            return []
        first, self.waiting = self.waiting, None
        self.swapped += 1
        return [frame, first]

    def idle(self) -> list[Frame]:
        out = [] if self.waiting is None else [self.waiting]
        self.waiting = None
        return out


# --- the relay ---


@dataclass(eq=False)  # held in a set, by identity
class _Link:
    """One client connection and its seq numbering."""

    client: ServerConnection
    base: int = 0  # SEQ_SCALE * the last upstream seq
    sent_since_base: int = 0
    last_out: int = -1
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def number(self, frame: Frame) -> None:
        if frame.seq is None:
            return
        if frame.keep_seq and frame.upstream_seq is not None:
            seq = frame.upstream_seq * SEQ_SCALE
        else:
            seq = max(self.base + self.sent_since_base, self.last_out + 1)
            self.sent_since_base += 1
        frame.body["seq"] = seq
        self.last_out = max(self.last_out, seq)


class HostileRelay:
    """`subscribeRepos` on loopback, relaying `upstream` (the PDS firehose URL) through `strategy`."""

    def __init__(self, upstream: str, strategy: Strategy | None = None) -> None:
        self.upstream = upstream
        self.strategy = strategy or Strategy()
        self.received: list[Frame] = []  # as the PDS sent them
        self.sent: list[Frame] = []  # as the relay sent them (seqs rewritten)
        self.subscribed = asyncio.Event()  # an upstream connection is open
        self.admit = asyncio.Event()  # cleared: new clients wait, connected but fed nothing
        self.admit.set()
        self.connections = 0
        self.cursors: list[int | None] = []  # the cursor each client asked for
        self.reencode_mismatches = 0  # upstream frames that decode-and-encode did not give back as they came
        self._server: Server | None = None
        self._links: set[_Link] = set()

    @property
    def url(self) -> str:
        assert self._server is not None, "relay not started"
        host, port = next(iter(self._server.sockets)).getsockname()[:2]
        return f"ws://{host}:{port}"

    async def __aenter__(self) -> Self:
        self._server = await serve(self._serve, "127.0.0.1", 0, max_size=None, compression=None)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def sent_commits(self, did: str) -> list[Frame]:
        return [f for f in self.sent if f.is_commit and f.did == did]

    def received_commits(self, did: str) -> list[Frame]:
        return [f for f in self.received if f.is_commit and f.did == did]

    async def drop_clients(self) -> None:
        """Close every client connection (they reconnect with their cursor)."""
        for link in list(self._links):
            await link.client.close(1001, "relay going away")

    async def inject(self, frames: Iterable[Frame]) -> None:
        """Send frames to every client now, with fresh seqs."""
        frames = list(frames)
        for link in list(self._links):
            await self._send(link, [f.copy() for f in frames])

    async def _send(self, link: _Link, frames: list[Frame]) -> None:
        async with link.lock:  # numbering and sending in one order
            for frame in frames:
                link.number(frame)
                self.sent.append(frame)
                await link.client.send(frame.encode())

    async def _serve(self, client: ServerConnection) -> None:
        url = urlsplit(client.request.path if client.request is not None else "")
        if url.path != SUBSCRIBE_PATH:
            await client.close(1008, "not subscribeRepos")
            return
        asked = parse_qs(url.query).get("cursor")
        cursor = int(asked[0]) if asked else None
        self.cursors.append(cursor)
        await self.admit.wait()
        upstream = self.upstream
        if cursor is not None:
            upstream += f"?cursor={cursor // SEQ_SCALE}"  # the PDS's seq of the event that seq came from
        self.connections += 1
        link = _Link(client)
        async with connect(upstream, max_size=None, compression=None) as pds:
            self.subscribed.set()
            self._links.add(link)
            inbox: asyncio.Queue[bytes | None] = asyncio.Queue()

            async def read() -> None:
                try:
                    async for message in pds:
                        inbox.put_nowait(message if isinstance(message, bytes) else message.encode())
                finally:
                    inbox.put_nowait(None)

            reader = asyncio.create_task(read())
            # a client that goes away must end this loop even when the upstream is silent
            gone = asyncio.create_task(client.wait_closed())
            gone.add_done_callback(lambda _: inbox.put_nowait(None))
            try:
                while True:
                    try:
                        message = await asyncio.wait_for(inbox.get(), IDLE_AFTER)
                    except TimeoutError:
                        await self._send(link, self.strategy.idle())
                        continue
                    if message is None:
                        break
                    frame = Frame.decode(message)
                    if frame.encode() != message:
                        self.reencode_mismatches += 1
                    self.received.append(frame)
                    if frame.upstream_seq is not None:
                        async with link.lock:
                            link.base = max(link.base, frame.upstream_seq * SEQ_SCALE)
                            link.sent_since_base = 0
                    await self._send(link, self.strategy.edit(frame.copy()))
            except ConnectionClosed:
                pass  # the client went away
            finally:
                self._links.discard(link)
                for task in (reader, gone):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                        await task


# --- holding the gap repair ---


class RepairGate:
    """Holds atmx's proof fetches (gap repair, backfill) between the fetch and the write, so that
    a test can order a repair's write against live commits: `fetched` gets each fetched write
    set, and nothing is written until `release` is set."""

    def __init__(self) -> None:
        self.fetched: asyncio.Queue[WriteSet] = asyncio.Queue()
        self.release = asyncio.Event()


@contextlib.contextmanager
def gate_repairs(backfiller: Backfiller) -> Iterator[RepairGate]:
    gate = RepairGate()
    fetch = backfiller.fetch_repo

    async def gated(did: str, *, refresh_identity: bool = False) -> WriteSet:
        ws = await fetch(did, refresh_identity=refresh_identity)
        gate.fetched.put_nowait(ws)
        await gate.release.wait()
        return ws

    backfiller.fetch_repo = gated  # type: ignore[method-assign]
    try:
        yield gate
    finally:
        gate.release.set()
        del backfiller.fetch_repo  # the class's method again


# --- records ---


def _did_peer_2() -> str:
    """A did:peer:2 with one X25519 key-agreement key (multicodec 0xec), as a key package needs."""
    raw = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "did:peer:2.E" + encode_base58btc(b"\xec\x01" + raw)


def unique_handle() -> str:
    return f"u{secrets.token_hex(4)}.test"


def xmtp_record() -> dict[str, Any]:
    return {
        "$type": XMTP,
        "id": secrets.token_hex(32),
        "verificationSignature": base64.b64encode(secrets.token_bytes(64)).decode(),
        "createdAt": now_iso(),
    }


def keypackage_record(label: str = "phone") -> dict[str, Any]:
    return {
        "$type": KEY_PACKAGE,
        "did": _did_peer_2(),
        "mediators": ["did:web:mediator.example.com"],
        "label": label,
        "createdAt": now_iso(),
    }


# --- what each side says ---


async def pds_truth(pds: PdsClient, did: str) -> dict[str, str]:
    """{uri: cid} of the account's indexed records, as the PDS itself serves them."""
    out: dict[str, str] = {}
    for collection in INDEXED:
        try:
            rec = await pds.query("com.atproto.repo.getRecord", {"repo": did, "collection": collection, "rkey": "self"})
        except XrpcError as exc:
            if exc.error != "RecordNotFound":
                raise
            continue
        out[str(rec["uri"])] = str(rec["cid"])
    return out


async def atmx_bindings(pool: asyncpg.Pool, did: str) -> dict[str, str]:
    """{uri: cid} of what atmx's API serves for the account (the API's own query)."""
    found = await queries.get_identities(pool, [did], [])
    return {b.uri: b.cid for ident in found for b in ident.bindings}


async def settled(pool: asyncpg.Pool, pds: PdsClient, did: str) -> bool:
    """atmx holds the PDS's latest rev for the account and has no repair of it queued."""
    latest = await pds.query("com.atproto.sync.getLatestCommit", {"did": did})
    row = await pool.fetchrow(
        "SELECT a.rev, (SELECT count(*) FROM resync_queue q WHERE q.did = a.did) AS queued"
        " FROM accounts a WHERE a.did = $1",
        did,
    )
    return row is not None and row["rev"] == latest["rev"] and row["queued"] == 0


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def metric_total(name: str, *, exclude_reason: str | None = None, **labels: str) -> float:
    """The sum of a counter over every label set that matches `labels` (and whose `reason` is not
    `exclude_reason`)."""
    total = 0.0
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name != name or any(sample.labels.get(k) != v for k, v in labels.items()):
                continue
            if exclude_reason is not None and sample.labels.get("reason") == exclude_reason:
                continue
            total += sample.value
    return total


async def poll(what: str, check: Callable[[], bool | Awaitable[bool]], deadline: float = 5.0) -> float:
    """Wait until `check` holds; fail after `deadline` seconds. Returns the time it took."""
    start = time.monotonic()
    while True:
        ok = check()
        if not isinstance(ok, bool):
            ok = await ok
        if ok:
            return time.monotonic() - start
        if time.monotonic() - start > deadline:
            raise AssertionError(f"{what}: not within {deadline}s")
        await asyncio.sleep(0.02)
