"""The firehose websocket loop: connect, resume from the cursor, back off, detect stalls.

I/O only: bytes go to frames.decode_frame and decoded events to the pipeline.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.frames import CloseCode

from . import metrics
from .frames import ErrorEvent, Event, FrameError, InfoEvent, decode_frame, event_seq

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 5 * 1024 * 1024 + 64 * 1024  # the spec's 5 MB frame limit, plus slack
BACKOFF_START = 0.5
BACKOFF_MAX = 60.0
HEALTHY_AFTER = 30.0  # a connection that lived this long resets the backoff


class Resubscribe(Exception):
    """Drop the connection and reconnect (reason is a metric label)."""

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
        on_event: Callable[[int | None, Event], Awaitable[None]],
        cursor: Callable[[], int | None],
        *,
        stall_timeout: float = 60.0,
        on_reset_cursor: Callable[[], Awaitable[None]] | None = None,
        on_outdated_cursor: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.url = url
        self.on_event = on_event
        self.cursor = cursor
        self.stall_timeout = stall_timeout
        self.on_reset_cursor = on_reset_cursor
        self.on_outdated_cursor = on_outdated_cursor
        self.connected = asyncio.Event()
        self._skip_cursor = False

    def subscribe_url(self) -> str:
        seq = None if self._skip_cursor else self.cursor()
        return self.url if seq is None else f"{self.url}?cursor={seq}"

    async def run(self) -> None:
        attempt = 0
        loop = asyncio.get_running_loop()
        while True:
            url = self.subscribe_url()
            started = loop.time()
            cause = "closed"
            try:
                async with websockets.connect(
                    url,
                    max_size=MAX_MESSAGE_BYTES,
                    compression=None,
                    open_timeout=20,
                    ping_interval=20,
                    ping_timeout=30,
                    close_timeout=5,
                ) as ws:
                    log.info("connected to %s", url)
                    self._skip_cursor = False
                    self.connected.set()
                    await self._receive(ws)
            except Resubscribe as exc:
                cause = exc.cause
                if exc.reset_cursor:
                    self._skip_cursor = True
                    if self.on_reset_cursor is not None:
                        await self.on_reset_cursor()
            except ConnectionClosed as exc:
                cause = "closed" if exc.rcvd is not None else "dropped"
                if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
                    # a frame over MAX_MESSAGE_BYTES: the library closed with 1009; count it as a bad frame
                    cause = "oversized_frame"
                    metrics.FRAME_ERRORS.labels("oversized").inc()
                    log.warning("frame over %d bytes after seq %s", MAX_MESSAGE_BYTES, self.cursor())
            except (TimeoutError, OSError, InvalidHandshake, InvalidURI) as exc:
                cause = "connect_failed"
                log.warning("cannot connect to %s: %s", url, exc)
            finally:
                self.connected.clear()
            metrics.RECONNECTS.labels(cause).inc()
            attempt = 0 if loop.time() - started > HEALTHY_AFTER else attempt + 1
            delay = backoff_delay(attempt)
            log.info("firehose connection ended (%s); reconnecting in %.1fs", cause, delay)
            await asyncio.sleep(delay)

    async def _receive(self, ws: websockets.ClientConnection) -> None:
        while True:
            try:
                message = await asyncio.wait_for(ws.recv(), timeout=self.stall_timeout)
            except TimeoutError:
                log.warning("no message for %.0fs; reconnecting", self.stall_timeout)
                raise Resubscribe("stalled") from None
            if isinstance(message, str):
                metrics.FRAME_ERRORS.labels("text_frame").inc()
                raise Resubscribe("bad_frame")
            try:
                event = decode_frame(message)
            except FrameError as exc:
                # invalid framing is a broken stream, not a skippable event (spec): reconnect
                metrics.FRAME_ERRORS.labels(exc.reason).inc()
                log.warning("malformed frame after seq %s: %s", self.cursor(), exc)
                raise Resubscribe("bad_frame") from None
            kind = type(event).__name__
            metrics.EVENTS.labels(kind).inc()
            if isinstance(event, ErrorEvent):
                metrics.UPSTREAM_ERRORS.labels(event.error).inc()
                log.warning("upstream error %s: %s", event.error, event.message)
                raise Resubscribe(event.error, reset_cursor=event.error == "FutureCursor")
            if isinstance(event, InfoEvent):
                metrics.UPSTREAM_ERRORS.labels(event.name).inc()
                # OutdatedCursor: events were lost upstream; backfill repairs the gap
                log.warning("upstream info %s: %s", event.name, event.message)
                if event.name == "OutdatedCursor" and self.on_outdated_cursor is not None:
                    await self.on_outdated_cursor()
                continue
            await self.on_event(event_seq(event), event)
