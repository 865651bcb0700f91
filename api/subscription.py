"""`directory.atmx.subscribeBindings`: the change log, streamed over a websocket.

One `ChangeHub` per API process reads the log (store/changes.py) as it grows, from whichever
database the process reads (a replica serves the stream as well as the primary), and hands
every change to each subscriber whose filters it passes; each change is framed once per
framing, whatever the number of subscribers.

A subscriber with a cursor first replays the log from the database, page by page, until it
is near the hub's position; it then joins the hub (synchronously, so no change is read
between its join and its snapshot of the hub's position), replays the few changes up to that
position, and goes live, skipping anything at or below the last seq it sent. So every change
is sent once, in seq order, with no gap between replay and live.

Cursor semantics: no cursor = live from now; `cursor=N` = every change with seq > N; `cursor=0`
= from the oldest retained; a cursor older than retention gets `#info OutdatedCursor` and starts
at the oldest retained; a cursor beyond the head is a `FutureCursor` error. A consumer whose
unsent backlog passes `max_backlog` gets `ConsumerTooSlow` and is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import asyncpg
from aiohttp import WSMsgType, web

from atmx.api import params as params_mod
from atmx.api.errors import invalid_request
from atmx.api.subscription_frames import JSON_SUBPROTOCOL, error_frame, event_frame, info_frame, json_event_frame
from atmx.indexer import metrics
from atmx.indexer.records.registry import PROTOCOLS
from atmx.indexer.repo.syntax import is_did
from atmx.indexer.store.changes import ChangeRow, log_bounds, read_changes
from atmx.indexer.store.errors import TRANSIENT_DB_ERRORS

__all__ = ["ChangeHub", "subscribe_bindings"]

log = logging.getLogger(__name__)

MAX_DIDS: Final = 10_000
PAGE: Final = 1000
POLL_SECONDS: Final = 0.05
MAX_BACKLOG: Final = 10_000  # frames waiting for one consumer before it is too slow

Frame = bytes | str


class _Encoded:
    """A change and its frames, each built at most once whatever the number of consumers."""

    __slots__ = ("_cbor", "_json", "protocol", "row")

    def __init__(self, row: ChangeRow) -> None:
        self.row = row
        self._cbor: bytes | None = None
        self._json: str | None = None
        self.protocol = row.protocol

    def frame(self, json_framing: bool) -> Frame:
        if json_framing:
            if self._json is None:
                self._json = json_event_frame(self.row.kind, self.row.seq, self.row.time, self.row.body)
            return self._json
        if self._cbor is None:
            self._cbor = event_frame(self.row.kind, self.row.seq, self.row.time, self.row.body)
        return self._cbor


@dataclass(eq=False)
class Subscriber:
    json_framing: bool
    dids: frozenset[str] | None
    protocols: frozenset[str] | None
    max_backlog: int = field(default_factory=lambda: MAX_BACKLOG)
    backlog: deque[_Encoded] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    too_slow: bool = False
    last_sent: int = 0
    task: asyncio.Task[object] | None = None  # the consumer's session, cancelled when it is too slow

    def wants(self, change: _Encoded) -> bool:
        if self.dids is not None and change.row.did not in self.dids:
            return False
        # #account and #handle changes concern every protocol of the account: always sent
        return self.protocols is None or change.protocol is None or change.protocol in self.protocols

    def offer(self, change: _Encoded) -> None:
        if self.too_slow or not self.wants(change):
            return
        if len(self.backlog) >= self.max_backlog:
            # the session may be stuck in a send the consumer does not read: stop it from here
            self.too_slow = True
            if self.task is not None:
                self.task.cancel()
        else:
            self.backlog.append(change)
        self.wake.set()


class ChangeHub:
    def __init__(self, pool_provider: Callable[[], asyncpg.Pool], *, poll: float = POLL_SECONDS) -> None:
        self.pool_provider = pool_provider
        self.poll = poll
        self.position = 0  # the last seq read from the log and handed to subscribers
        self.subscribers: set[Subscriber] = set()
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def join(self, sub: Subscriber) -> int:
        """Register `sub` for every change read from now on; returns the position it starts after."""
        self.subscribers.add(sub)
        metrics.STREAM_CONSUMERS.set(len(self.subscribers))
        return self.position

    def leave(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        metrics.STREAM_CONSUMERS.set(len(self.subscribers))

    async def _run(self) -> None:
        delay = self.poll
        while True:
            try:
                if not self.ready.is_set():
                    self.position = (await log_bounds(self.pool_provider())).newest
                    self.ready.set()
                rows = await read_changes(self.pool_provider(), self.position, PAGE)
            except Exception as exc:  # the database is away (or no pool yet): the stream waits, never dies
                if delay == self.poll:
                    log.warning("change stream cannot read the log (%s: %s); retrying", type(exc).__name__, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = self.poll
            for row in rows:
                change = _Encoded(row)
                self.position = row.seq
                for sub in self.subscribers:
                    sub.offer(change)
            if rows:
                metrics.STREAM_HEAD.set(self.position)
            if len(rows) < PAGE:
                await asyncio.sleep(self.poll)


HUB: Final = web.AppKey("atmx_change_hub", ChangeHub)


def _parse(query: params_mod.Params) -> tuple[int | None, frozenset[str] | None, frozenset[str] | None]:
    raw = params_mod.one(query, "cursor")
    cursor = None
    if raw is not None:
        if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
            raise invalid_request("cursor must be a non-negative integer")
        cursor = int(raw)
    protocols = query.getall("protocols", [])
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise invalid_request(f"unknown protocol {unknown[0][:40]!r}: expected one of {', '.join(PROTOCOLS)}")
    dids = query.getall("dids", [])
    if len(dids) > MAX_DIDS:
        raise invalid_request(f"Too many dids: at most {MAX_DIDS}")
    bad = [d for d in dids if not is_did(d)]
    if bad:
        raise invalid_request(f"not a DID: {bad[0][:100]!r}")
    return cursor, frozenset(protocols) or None, frozenset(dids) or None


async def subscribe_bindings(request: web.Request) -> web.StreamResponse:
    cursor, protocols, dids = _parse(request.query)
    # No permessage-deflate, even when offered (browsers and aiohttp offer it): it would compress
    # each frame once per consumer, where the frames are built once for all of them.
    ws = web.WebSocketResponse(protocols=(JSON_SUBPROTOCOL,), heartbeat=30.0, max_msg_size=64 * 1024, compress=False)
    await ws.prepare(request)
    hub = request.app[HUB]
    sub = Subscriber(ws.ws_protocol == JSON_SUBPROTOCOL, dids, protocols)
    sub.task = asyncio.current_task()
    reader = asyncio.create_task(_read_until_closed(ws))
    try:
        await hub.ready.wait()
        await _serve(ws, hub, sub, cursor, reader)
    except asyncio.CancelledError:
        if not sub.too_slow:
            raise  # the server is stopping
        if sub.task is not None:
            sub.task.uncancel()  # our own cancel, handled here: timeouts below must work as usual
        metrics.STREAM_DROPPED.labels("too_slow").inc()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await _send_error(ws, sub, "ConsumerTooSlow", "fell too far behind; reconnect with your cursor")
    except ConnectionResetError:
        pass
    except TRANSIENT_DB_ERRORS as exc:
        log.warning("change stream consumer dropped: the log cannot be read (%s)", exc)
        await _send_error(ws, sub, "DatabaseUnavailable", "the change log cannot be read; reconnect with your cursor")
    finally:
        hub.leave(sub)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await ws.close()
    return ws


async def _read_until_closed(ws: web.WebSocketResponse) -> None:
    """The stream is server-push only: read (which answers pings) until the consumer closes."""
    async for msg in ws:
        if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            return


async def _serve(
    ws: web.WebSocketResponse, hub: ChangeHub, sub: Subscriber, cursor: int | None, reader: asyncio.Task[None]
) -> None:
    pool = hub.pool_provider()
    if cursor is None:
        sub.last_sent = hub.join(sub)
    else:
        bounds = await log_bounds(pool)
        if cursor > bounds.newest:
            await _send_error(ws, sub, "FutureCursor", f"cursor {cursor} is ahead of the stream head {bounds.newest}")
            return
        sub.last_sent = cursor
        if 0 < cursor < bounds.pruned_through:
            await _send(
                ws, info_frame("OutdatedCursor", "cursor is older than the retained log", json_framing=sub.json_framing)
            )
            sub.last_sent = bounds.pruned_through
        # replay from the database until close to the hub, then join it and close the gap
        while True:
            page = await _replay_page(ws, sub, pool)
            if page < PAGE or sub.last_sent >= hub.position:
                break
        position = hub.join(sub)
        while sub.last_sent < position:
            if await _replay_page(ws, sub, pool, until=position) == 0:
                break
    # The consumer closing wakes the sender as a new change does: one event to wait on, and no
    # task or asyncio.wait per change, which with a thousand consumers is most of the stream's cost.
    reader.add_done_callback(lambda _reader: sub.wake.set())
    while not reader.done():
        if sub.too_slow:
            metrics.STREAM_DROPPED.labels("too_slow").inc()
            await _send_error(
                ws, sub, "ConsumerTooSlow", "the consumer fell too far behind; reconnect with your cursor"
            )
            return
        if not sub.backlog:
            sub.wake.clear()
            await sub.wake.wait()
            continue
        change = sub.backlog.popleft()
        if change.row.seq <= sub.last_sent:
            continue  # already sent by the replay
        await _send(ws, change.frame(sub.json_framing))
        sub.last_sent = change.row.seq


async def _replay_page(ws: web.WebSocketResponse, sub: Subscriber, pool: asyncpg.Pool, until: int | None = None) -> int:
    rows = await read_changes(pool, sub.last_sent, PAGE, sorted(sub.dids) if sub.dids is not None else None)
    sent = 0
    for row in rows:
        if until is not None and row.seq > until:
            break
        change = _Encoded(row)
        if sub.wants(change):
            await _send(ws, change.frame(sub.json_framing))
        sub.last_sent = row.seq
        sent += 1
    metrics.STREAM_REPLAYED.inc(sent)
    return sent


async def _send(ws: web.WebSocketResponse, frame: Frame) -> None:
    if isinstance(frame, bytes):
        await ws.send_bytes(frame)
    else:
        await ws.send_str(frame)
    metrics.STREAM_SENT.inc()


async def _send_error(ws: web.WebSocketResponse, sub: Subscriber, error: str, message: str) -> None:
    with contextlib.suppress(ConnectionResetError, RuntimeError):
        await _send(ws, error_frame(error, message, json_framing=sub.json_framing))
