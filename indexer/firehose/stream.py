"""The firehose connection: connect, resume from the cursor, back off, detect stalls, apply back-pressure.

I/O only. Bytes off the socket go through the sans-I/O websocket reader (websocket.py) and the
pre-filter (prefilter.py); the events come out in seq order to a sink (the pipeline) whose
`offer` never blocks. When the sink is `busy()` the socket stops being read (TCP pushes back
on the relay) until it has room again.

This is an asyncio Protocol rather than a websockets connection because at the firehose's
rates the per-message cost matters: messages are handled inside `data_received`, a whole
socket read at a time, with no future, task or timer per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Protocol

from websockets.exceptions import InvalidHandshake, InvalidURI
from websockets.frames import CloseCode

from atmx.indexer import metrics
from atmx.indexer.firehose.frames import ErrorEvent, Event, FrameError, InfoEvent
from atmx.indexer.firehose.prefilter import Prefilter
from atmx.indexer.firehose.silence import SilenceProbe
from atmx.indexer.firehose.websocket import (
    CloseMessage,
    Handshake,
    Message,
    MessageReader,
    PingMessage,
    TextMessage,
    close_frame,
    ping_frame,
    pong_frame,
)
from atmx.indexer.version import __version__

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 5 * 1024 * 1024 + 64 * 1024  # the spec's 5 MB frame limit, plus slack
BACKOFF_START = 0.5
BACKOFF_MAX = 60.0
HEALTHY_AFTER = 30.0  # a connection that lived this long resets the backoff
OPEN_TIMEOUT = 20.0
PING_INTERVAL = 20.0  # keepalive for proxies and NATs; silence itself is caught by the stall timeout
TICK = 0.25  # how often the watchdog looks at the connection and publishes the counts
RECONNECT_GRACE = 5.0  # a reconnect this short still counts as connected (an idle upstream is resubscribed)


class EventSink(Protocol):
    def wants(self, did: str) -> bool: ...
    def offer(self, ev: Event) -> bool: ...  # True: hand over nothing more until wait_room() returns
    async def wait_room(self) -> None: ...


class Resubscribe(Exception):
    """Drop the connection and reconnect (cause is a metric label)."""

    def __init__(self, cause: str, *, reset_cursor: bool = False) -> None:
        super().__init__(cause)
        self.cause = cause
        self.reset_cursor = reset_cursor


def backoff_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff."""
    cap = min(BACKOFF_MAX, BACKOFF_START * (2**attempt))
    return (rng or random).uniform(cap / 2, cap)


class FirehoseStream:
    def __init__(
        self,
        url: str,
        sink: EventSink,
        cursor: Callable[[], int | None],
        *,
        stall_timeout: float = 60.0,
        on_reset_cursor: Callable[[], Awaitable[None]] | None = None,
        on_outdated_cursor: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.url = url
        self.sink = sink
        self.cursor = cursor
        self.stall_timeout = stall_timeout
        self.on_reset_cursor = on_reset_cursor
        self.on_outdated_cursor = on_outdated_cursor
        self.prefilter = Prefilter(sink.wants)
        self.connected = asyncio.Event()
        self._skip_cursor = False
        self._published: dict[str, int] = {}
        self._background: set[asyncio.Task[object]] = set()
        self._tls_context: ssl.SSLContext | None = None
        # for liveness (indexer/liveness.py), on the loop's clock
        self.last_event_at: float | None = None  # when the last message was handed to the sink
        self.disconnected_at: float | None = None  # when the last connection ended; None while connected
        # after a resubscribe for silence, the next event tells an idle upstream from a stalled one
        self._silence = SilenceProbe(stall_timeout)
        self._quiet_reconnect = False  # the last connection ended for silence: log its cycle at DEBUG

    def is_connected(self, now: float) -> bool:
        """Connected, or reconnecting for less than RECONNECT_GRACE seconds since a connection ended."""
        if self.connected.is_set():
            return True
        return self.disconnected_at is not None and now - self.disconnected_at < RECONNECT_GRACE

    def subscribe_url(self) -> str:
        seq = None if self._skip_cursor else self.cursor()
        return self.url if seq is None else f"{self.url}?cursor={seq}"

    async def run(self) -> None:
        attempt = 0
        loop = asyncio.get_running_loop()
        try:
            while True:
                url = self.subscribe_url()
                started = loop.time()
                try:
                    await self._session(url)
                    cause = "closed"
                except Resubscribe as exc:
                    cause = exc.cause
                    if exc.reset_cursor:
                        self._skip_cursor = True
                        if self.on_reset_cursor is not None:
                            await self.on_reset_cursor()
                except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
                    cause = "connect_failed"
                    log.warning("cannot connect to %s: %s", url, exc)
                finally:
                    if self.connected.is_set():
                        self.disconnected_at = loop.time()
                    self.connected.clear()
                    self._publish_counts()
                metrics.RECONNECTS.labels(cause).inc()
                # a connection that went quiet after opening worked: resubscribe promptly (an idle
                # upstream with a short stall timeout must not climb the backoff)
                healthy = cause == "stalled" or loop.time() - started > HEALTHY_AFTER
                attempt = 0 if healthy else attempt + 1
                delay = backoff_delay(attempt)
                self._quiet_reconnect = cause == "stalled"
                log.log(
                    logging.DEBUG if self._quiet_reconnect else logging.INFO,
                    "firehose connection ended (%s); reconnecting in %.1fs",
                    cause,
                    delay,
                )
                await asyncio.sleep(delay)
        finally:
            for task in self._background:
                task.cancel()

    async def _session(self, url: str) -> None:
        """One connection, until it ends; raises Resubscribe with the cause."""
        loop = asyncio.get_running_loop()
        handshake = Handshake(url, user_agent=f"atmx/{__version__}")
        uri = handshake.uri
        connection = _Connection(self, handshake, loop)
        tls = self._tls() if uri.secure else None
        # asyncio.timeout, not wait_for: on Python 3.11, wait_for can drop a cancel that arrives
        # as the handshake ends, and the stream would then reconnect for ever instead of stopping
        async with asyncio.timeout(OPEN_TIMEOUT):
            transport, _ = await loop.create_connection(
                lambda: connection, uri.host, uri.port, ssl=tls, server_hostname=uri.host if tls else None
            )
        try:
            async with asyncio.timeout(OPEN_TIMEOUT):
                await asyncio.shield(connection.opened)
            log.log(logging.DEBUG if self._quiet_reconnect else logging.INFO, "connected to %s", url)
            self._skip_cursor = False
            self.connected.set()
            self.disconnected_at = None
            next_ping = loop.time() + PING_INTERVAL
            while not connection.ended.done():
                await asyncio.wait((connection.ended,), timeout=TICK)
                self._publish_counts()
                now = loop.time()
                if not connection.paused and now - connection.last_message > self.stall_timeout:
                    # an idle upstream is silent too: resubscribe from the cursor, and let the first
                    # event after it say whether anything was held back (silence.py)
                    log.log(
                        logging.DEBUG if self._quiet_reconnect else logging.INFO,  # once per quiet spell
                        "no message for %.0fs; resubscribing from the cursor",
                        self.stall_timeout,
                    )
                    self._silence.arm()
                    connection.fail(Resubscribe("stalled"))
                elif now >= next_ping:
                    connection.send(ping_frame(b"atmx"))
                    next_ping = now + PING_INTERVAL
            connection.ended.result()  # raises the Resubscribe that ended it
        finally:
            if not transport.is_closing():
                transport.abort()

    def _publish_counts(self) -> None:
        # messages are counted per type in the pre-filter and published here, not one by one
        for kind, total in self.prefilter.counts.items():
            delta = total - self._published.get(kind, 0)
            if delta:
                metrics.EVENTS.labels(kind).inc(delta)
                self._published[kind] = total

    def _background_task(self, coro: Awaitable[object]) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _outdated_cursor(self, queue_repairs: Callable[[], Awaitable[object]]) -> None:
        """Queue the gap repair, retrying until the database takes it: the gap is real either way."""
        for attempt in itertools.count():
            try:
                await queue_repairs()
                return
            except Exception as exc:
                metrics.DB_ERRORS.labels("outdated_cursor").inc()
                delay = backoff_delay(attempt)
                log.warning("cannot queue the repair of an OutdatedCursor gap (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    def _tls(self) -> ssl.SSLContext:
        if self._tls_context is None:  # loading the system's CA certificates takes a while
            self._tls_context = ssl.create_default_context()
        return self._tls_context

    # --- messages (called from _Connection.data_received) ---

    def _message(self, data: bytes) -> bool:
        """Decode and hand over one message; True when the sink is full."""
        try:
            event = self.prefilter.decode(data)
        except FrameError as exc:
            # invalid framing is a broken stream, not a skippable event (spec): reconnect
            metrics.FRAME_ERRORS.labels(exc.reason).inc()
            log.warning("malformed frame after seq %s: %s", self.cursor(), exc)
            raise Resubscribe("bad_frame") from None
        if type(event) is ErrorEvent:
            metrics.UPSTREAM_ERRORS.labels(event.error).inc()
            log.warning("upstream error %s: %s", event.error, event.message)
            raise Resubscribe(event.error, reset_cursor=event.error == "FutureCursor")
        if type(event) is InfoEvent:
            metrics.UPSTREAM_ERRORS.labels(event.name).inc()
            # OutdatedCursor: events were lost upstream; the gap repair re-fetches every candidate
            log.warning("upstream info %s: %s", event.name, event.message)
            if event.name == "OutdatedCursor" and self.on_outdated_cursor is not None:
                self._background_task(self._outdated_cursor(self.on_outdated_cursor))
            return False
        if self._silence.armed:
            self._quiet_reconnect = False
            if self._silence.held_back(getattr(event, "time", None)):
                log.warning("the upstream held back events while the connection was silent: it had stalled")
        return self.sink.offer(event)


class _Connection(asyncio.Protocol):
    """One websocket connection's protocol: handshake, frames, control messages, back-pressure."""

    def __init__(self, stream: FirehoseStream, handshake: Handshake, loop: asyncio.AbstractEventLoop) -> None:
        self.stream = stream
        self.handshake: Handshake | None = handshake
        self.loop = loop
        self.reader = MessageReader(MAX_MESSAGE_BYTES)
        self.opened: asyncio.Future[None] = loop.create_future()
        self.ended: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.last_message = loop.time()
        self.paused = False
        self._held: tuple[list[Message], int] | None = None  # messages read but not delivered yet

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        assert self.handshake is not None
        transport.write(self.handshake.request)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def fail(self, exc: BaseException, close_code: int | None = None) -> None:
        """End the connection with `exc` as its outcome."""
        for outcome in (self.ended, self.opened):
            if not outcome.done():
                outcome.set_exception(exc)
                outcome.exception()  # _session raises it; no "never retrieved" after a cancel
        if self.transport is not None and not self.transport.is_closing():
            if close_code is not None:
                self.transport.write(close_frame(close_code))
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.ended.done():
            return
        if self.handshake is not None:
            try:
                rest = self.handshake.receive(data)
            except InvalidHandshake as exc:
                self.fail(exc)
                return
            if rest is None:
                return
            self.handshake = None
            self.opened.set_result(None)
            self.last_message = self.loop.time()
            if not rest:
                return
            data = rest
        self._deliver(self.reader.feed(data), 0)

    def _deliver(self, messages: list[Message], start: int) -> None:
        """Hand messages[start:] to the stream; when the sink is full, keep the rest for later and
        stop reading, so the events in memory stay within the sink's bound (plus one)."""
        on_message = self.stream._message
        delivered = False
        try:
            for i in range(start, len(messages)):
                message = messages[i]
                if type(message) is bytes:
                    delivered = True
                    if on_message(message):  # the sink is full: keep the rest (maybe none) for later
                        self._held = (messages, i + 1)
                        self._pause()
                        break
                else:
                    self._control(message)
                    if self.ended.done():
                        return
            else:
                self._held = None
                self._after_messages()
        except Resubscribe as exc:
            self.fail(exc, CloseCode.NORMAL_CLOSURE)
            return
        if delivered:  # silence is judged on messages: a relay that only answers pings is stalled
            self.last_message = self.stream.last_event_at = self.loop.time()

    def _after_messages(self) -> None:
        error = self.reader.error
        if error is None:
            return
        # raised only after the messages before it were delivered
        if error.code == CloseCode.MESSAGE_TOO_BIG:
            metrics.FRAME_ERRORS.labels("oversized").inc()
            log.warning("frame over %d bytes after seq %s", MAX_MESSAGE_BYTES, self.stream.cursor())
            self.fail(Resubscribe("oversized_frame"), error.code)
        else:
            metrics.FRAME_ERRORS.labels("websocket_protocol").inc()
            log.warning("websocket protocol error from the upstream: %s", error.reason)
            self.fail(Resubscribe("bad_frame"), error.code)

    def _pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
            self.stream._background_task(self._resume_when_ready())

    def _control(self, message: object) -> None:
        if type(message) is PingMessage:
            self.send(pong_frame(message.payload))
        elif type(message) is CloseMessage:
            code = message.code if message.code != CloseCode.NO_STATUS_RCVD else CloseCode.NORMAL_CLOSURE
            self.send(close_frame(code))
            self.fail(Resubscribe("closed"))
        elif type(message) is TextMessage:
            metrics.FRAME_ERRORS.labels("text_frame").inc()
            self.fail(Resubscribe("bad_frame"), CloseCode.UNSUPPORTED_DATA)
        # pongs need nothing: silence is judged on messages, not on keepalives

    async def _resume_when_ready(self) -> None:
        await self.stream.sink.wait_room()
        self.paused = False
        self.last_message = self.loop.time()  # the silence was ours
        if self.ended.done() or self.transport is None or self.transport.is_closing():
            return
        if self._held is not None:
            self._deliver(*self._held)
            if self.paused or self.ended.done():
                return  # busy again: another resume is under way
        with contextlib.suppress(RuntimeError):
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(Resubscribe("dropped"))

    def eof_received(self) -> bool | None:
        return False  # close the transport
