"""The websocket loop against a real websocket server on loopback playing scripted scenarios."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from metric_samples import sample
from websockets.asyncio.server import ServerConnection, serve

from atmx.indexer.firehose import stream as stream_mod
from atmx.indexer.firehose.frames import Event, decode_frame, event_seq
from atmx.indexer.firehose.stream import FirehoseStream, backoff_delay

FRAMES = Path(__file__).parent / "fixtures" / "devnet-frames"
LIVE = [p.read_bytes() for p in sorted(FRAMES.glob("*-live-*.bin"))]
FUTURE_CURSOR = (FRAMES / "41-future-cursor-error.bin").read_bytes()
OUTDATED = (FRAMES / "42-outdated-cursor-info.bin").read_bytes()
SEQS = [event_seq(decode_frame(f)) for f in LIVE]


class Upstream:
    """A scripted subscribeRepos server: each connection runs the next script."""

    def __init__(self, scripts: list[Callable[[ServerConnection], object]]) -> None:
        self.scripts = scripts
        self.paths: list[str] = []
        self.url = ""

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.paths.append(ws.request.path)
        index = len(self.paths) - 1
        script = self.scripts[min(index, len(self.scripts) - 1)]
        await script(ws)  # type: ignore[misc]


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_mod, "BACKOFF_START", 0.01)


@pytest.fixture
async def upstream_factory() -> AsyncIterator[Callable[..., object]]:
    servers = []

    async def make(scripts: list[Callable[[ServerConnection], object]]) -> Upstream:
        up = Upstream(scripts)
        server = await serve(up.handler, "127.0.0.1", 0)
        servers.append(server)
        port = next(iter(server.sockets)).getsockname()[1]
        up.url = f"ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos"
        return up

    yield make
    for s in servers:
        s.close()
        await s.wait_closed()


class Sink:
    """Takes every event (wants every DID), like a pipeline with room to spare."""

    def __init__(self, until: int) -> None:
        self.events: list[tuple[int | None, Event]] = []
        self.last: int | None = None
        self.until = until
        self.done = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()

    def wants(self, did: str) -> bool:
        return True

    def offer(self, ev: Event) -> bool:
        seq = event_seq(ev)
        self.events.append((seq, ev))
        if seq is not None:
            self.last = seq
        if len(self.events) >= self.until:
            self.done.set()
        return self.busy()

    def busy(self) -> bool:
        return not self.room.is_set()

    async def wait_room(self) -> None:
        await self.room.wait()


async def run_until(fs: FirehoseStream, sink: Sink, limit: float = 10) -> None:
    task = asyncio.create_task(fs.run())
    try:
        await asyncio.wait_for(sink.done.wait(), limit)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def send(frames: list[bytes], *, then: str = "hold") -> Callable[[ServerConnection], object]:
    async def script(ws: ServerConnection) -> None:
        for f in frames:
            await ws.send(f)
        if then == "hold":
            await ws.wait_closed()
        elif then == "abort":
            ws.transport.abort()

    return script


async def test_delivers_every_event_in_order(upstream_factory: Callable[..., object]) -> None:
    up = await upstream_factory([send(LIVE)])  # type: ignore[operator]
    sink = Sink(until=len(LIVE))
    fs = FirehoseStream(up.url, sink, lambda: sink.last)
    await run_until(fs, sink)
    assert [s for s, _ in sink.events] == SEQS
    assert up.paths == ["/xrpc/com.atproto.sync.subscribeRepos"]


async def test_abrupt_close_resumes_from_the_last_seq(upstream_factory: Callable[..., object]) -> None:
    up = await upstream_factory([send(LIVE[:10], then="abort"), send(LIVE[10:])])  # type: ignore[operator]
    sink = Sink(until=len(LIVE))
    fs = FirehoseStream(up.url, sink, lambda: sink.last)
    await run_until(fs, sink)
    assert [s for s, _ in sink.events] == SEQS
    assert up.paths[1].endswith(f"?cursor={SEQS[9]}")


async def test_garbage_frame_drops_the_connection_and_resumes(upstream_factory: Callable[..., object]) -> None:
    up = await upstream_factory([send([*LIVE[:5], b"\xff\x00garbage"]), send(LIVE[5:])])  # type: ignore[operator]
    sink = Sink(until=len(LIVE))
    fs = FirehoseStream(up.url, sink, lambda: sink.last)
    before = sample("atmx_firehose_frame_errors_total", reason="bad_cbor")
    await run_until(fs, sink)
    assert [s for s, _ in sink.events] == SEQS
    assert up.paths[1].endswith(f"?cursor={SEQS[4]}")
    assert sample("atmx_firehose_frame_errors_total", reason="bad_cbor") == before + 1


async def test_future_cursor_resets_to_live(upstream_factory: Callable[..., object]) -> None:
    resets = []

    async def on_reset() -> None:
        resets.append(True)

    up = await upstream_factory([send([FUTURE_CURSOR], then="close"), send(LIVE[:3])])  # type: ignore[operator]
    sink = Sink(until=3)
    fs = FirehoseStream(up.url, sink, lambda: 999_999, on_reset_cursor=on_reset)
    await run_until(fs, sink)
    assert up.paths[0].endswith("?cursor=999999")
    assert "cursor" not in up.paths[1]
    assert resets == [True]


async def test_outdated_cursor_is_counted_and_the_stream_continues(upstream_factory: Callable[..., object]) -> None:
    up = await upstream_factory([send([OUTDATED, *LIVE[:4]])])  # type: ignore[operator]
    sink = Sink(until=4)
    fs = FirehoseStream(up.url, sink, lambda: sink.last)
    before = sample("atmx_firehose_upstream_errors_total", name="OutdatedCursor")
    await run_until(fs, sink)
    assert [s for s, _ in sink.events] == SEQS[:4]
    assert len(up.paths) == 1
    assert sample("atmx_firehose_upstream_errors_total", name="OutdatedCursor") == before + 1


async def test_silent_socket_is_reconnected(
    upstream_factory: Callable[..., object], caplog: pytest.LogCaptureFixture
) -> None:
    """The resubscribed stream delivers events older than the moment we gave up: the silent
    connection had stalled with events waiting, which is worth a warning."""
    up = await upstream_factory([send(LIVE[:2]), send(LIVE[2:4])])  # type: ignore[operator]
    sink = Sink(until=4)
    fs = FirehoseStream(up.url, sink, lambda: sink.last, stall_timeout=0.3)
    with caplog.at_level("INFO", logger="atmx.indexer.firehose.stream"):
        await run_until(fs, sink)
    assert len(up.paths) == 2 and up.paths[1].endswith(f"?cursor={SEQS[1]}")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "held back events while the connection was silent" in warnings[0]


async def test_an_idle_upstream_is_resubscribed_quietly(
    upstream_factory: Callable[..., object], caplog: pytest.LogCaptureFixture
) -> None:
    """Silence with nothing held back (an idle network) resubscribes from the cursor without a
    warning: one INFO line for the quiet spell, DEBUG after, and the stream counts as connected."""
    up = await upstream_factory([send(LIVE[:2]), send([])])  # type: ignore[operator]  # then silent, every time
    sink = Sink(until=2)
    fs = FirehoseStream(up.url, sink, lambda: sink.last, stall_timeout=0.2)
    loop = asyncio.get_running_loop()
    with caplog.at_level("DEBUG", logger="atmx.indexer.firehose.stream"):
        task = asyncio.create_task(fs.run())
        try:
            await asyncio.wait_for(sink.done.wait(), 10)
            connected = []
            for _ in range(12):  # ~1.2 s: several resubscribes
                await asyncio.sleep(0.1)
                connected.append(fs.is_connected(loop.time()))
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert len(up.paths) >= 3 and all(p.endswith(f"?cursor={SEQS[1]}") for p in up.paths[1:])
    assert all(connected)
    assert fs.last_event_at is not None and loop.time() - fs.last_event_at > 1.0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    silences = [r for r in caplog.records if r.getMessage().startswith("no message for")]
    assert [r.levelname for r in silences][:1] == ["INFO"] and {r.levelname for r in silences[1:]} == {"DEBUG"}


async def test_unreachable_upstream_is_retried(upstream_factory: Callable[..., object]) -> None:
    up = await upstream_factory([send(LIVE[:1])])  # type: ignore[operator]
    dead = "ws://127.0.0.1:9/xrpc/com.atproto.sync.subscribeRepos"
    sink = Sink(until=1)
    fs = FirehoseStream(dead, sink, lambda: None)
    task = asyncio.create_task(fs.run())
    await asyncio.sleep(0.3)
    assert not task.done()  # keeps retrying instead of dying
    fs.url = up.url
    try:
        await asyncio.wait_for(sink.done.wait(), 10)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_backoff_is_jittered_and_capped() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(a, rng) for a in range(20)]
    assert all(0 < d <= stream_mod.BACKOFF_MAX for d in delays)
    assert delays[-1] >= stream_mod.BACKOFF_MAX / 2
    assert len({round(d, 6) for d in delays}) == len(delays)


class Picky(Sink):
    """A sink that indexes no DID: the pre-filter should hand it seqs only."""

    def wants(self, did: str) -> bool:
        return False


async def test_events_of_dids_nobody_indexes_arrive_as_seqs_only(upstream_factory: Callable[..., object]) -> None:
    from atmx.indexer.firehose.frames import CommitEvent, SkippedEvent

    up = await upstream_factory([send(LIVE)])  # type: ignore[operator]
    sink = Picky(until=len(LIVE))
    fs = FirehoseStream(up.url, sink, lambda: sink.last)
    await run_until(fs, sink)
    assert [s for s, _ in sink.events] == SEQS  # every seq still reaches the cursor
    kinds = {type(ev) for _, ev in sink.events}
    # the devnet frames hold commits of both indexed collections; everything else is skipped
    assert kinds <= {SkippedEvent, CommitEvent} and SkippedEvent in kinds
    for _, ev in sink.events:
        if isinstance(ev, CommitEvent):
            assert any(op.path.startswith(("org.xmtp.inbox/", "at.didcomm.keyPackage/")) for op in ev.ops)


class Bounded(Sink):
    """Busy once it holds `limit` events, until `room` is set."""

    def __init__(self, until: int, limit: int) -> None:
        super().__init__(until)
        self.limit = limit
        self.room.clear()

    def busy(self) -> bool:
        return len(self.events) >= self.limit and not self.room.is_set()


async def test_a_busy_sink_gets_nothing_more_and_no_stall_is_counted(upstream_factory: Callable[..., object]) -> None:
    up = await upstream_factory([send(LIVE)])  # every message in one or two reads
    sink = Bounded(until=len(LIVE), limit=5)
    fs = FirehoseStream(up.url, sink, lambda: sink.last, stall_timeout=0.2)
    stalls = sample("atmx_firehose_reconnects_total", cause="stalled")
    task = asyncio.create_task(fs.run())
    try:
        await asyncio.sleep(0.8)  # four stall timeouts
        # held back mid-read: the bound is exact, not "one socket read too many"
        assert len(sink.events) == 5, "nothing is handed over while the sink is busy"
        assert sample("atmx_firehose_reconnects_total", cause="stalled") == stalls
        sink.room.set()
        await asyncio.wait_for(sink.done.wait(), 10)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [s for s, _ in sink.events] == SEQS
    assert len(up.paths) == 1


async def test_a_relay_that_only_answers_pings_is_stalled(upstream_factory: Callable[..., object]) -> None:
    async def pinging(ws: ServerConnection) -> None:
        for f in LIVE[:2]:
            await ws.send(f)
        while True:  # alive at the websocket level, silent at the firehose level
            await ws.ping()
            await asyncio.sleep(0.05)

    up = await upstream_factory([pinging, send(LIVE[2:4])])  # type: ignore[operator]
    sink = Sink(until=4)
    fs = FirehoseStream(up.url, sink, lambda: sink.last, stall_timeout=0.3)
    await run_until(fs, sink)
    assert len(up.paths) == 2 and up.paths[1].endswith(f"?cursor={SEQS[1]}")


@pytest.mark.parametrize(
    ("bad", "label", "reason"),
    [
        ("text", "bad_frame", "text_frame"),
        ("oversized", "oversized_frame", "oversized"),
    ],
)
async def test_bad_messages_drop_the_connection_and_resume(
    upstream_factory: Callable[..., object], bad: str, label: str, reason: str
) -> None:
    async def script(ws: ServerConnection) -> None:
        for f in LIVE[:3]:
            await ws.send(f)
        await ws.send("a text frame" if bad == "text" else b"\0" * (stream_mod.MAX_MESSAGE_BYTES + 1))
        await ws.wait_closed()

    up = await upstream_factory([script, send(LIVE[3:])])  # type: ignore[operator]
    sink = Sink(until=len(LIVE))
    fs = FirehoseStream(up.url, sink, lambda: sink.last)
    reconnects = sample("atmx_firehose_reconnects_total", cause=label)
    errors = sample("atmx_firehose_frame_errors_total", reason=reason)
    await run_until(fs, sink)
    assert [s for s, _ in sink.events] == SEQS
    assert up.paths[1].endswith(f"?cursor={SEQS[2]}")
    assert sample("atmx_firehose_reconnects_total", cause=label) == reconnects + 1
    assert sample("atmx_firehose_frame_errors_total", reason=reason) == errors + 1


async def test_a_refused_upgrade_is_a_failed_connect(upstream_factory: Callable[..., object]) -> None:
    from aiohttp import web

    async def refuse(_request: web.Request) -> web.Response:
        return web.Response(status=429, headers={"Retry-After": "1"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    sink = Sink(until=1)
    fs = FirehoseStream(f"ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos", sink, lambda: None)
    before = sample("atmx_firehose_reconnects_total", cause="connect_failed")
    task = asyncio.create_task(fs.run())
    try:
        for _ in range(100):
            if sample("atmx_firehose_reconnects_total", cause="connect_failed") > before:
                break
            await asyncio.sleep(0.05)
        assert sample("atmx_firehose_reconnects_total", cause="connect_failed") > before
        assert not task.done()  # a refused upgrade is retried, never the end of the stream
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()


async def test_a_cancel_that_meets_a_refused_upgrade_still_stops_the_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Shutdown cancels the stream; if the upstream's refusal lands in the same loop turn, the
    # cancel must still win (Python 3.11's asyncio.wait_for returned the inner outcome instead,
    # and the stream reconnected for ever).
    from aiohttp import web

    async def refuse(_request: web.Request) -> web.Response:
        return web.Response(status=429)

    app = web.Application()
    app.router.add_get("/{tail:.*}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    fs = FirehoseStream(f"ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos", Sink(until=1), lambda: None)
    task = asyncio.create_task(fs.run())
    received = stream_mod._Connection.data_received

    def refused_then_cancelled(self: stream_mod._Connection, data: bytes) -> None:
        received(self, data)  # the 429: the handshake fails...
        task.cancel()  # ...and the shutdown's cancel arrives before the stream's task runs again

    monkeypatch.setattr(stream_mod._Connection, "data_received", refused_then_cancelled)
    try:
        done, _ = await asyncio.wait((task,), timeout=5)
        assert task in done and task.cancelled()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()


async def test_an_outdated_cursor_repair_is_retried_until_queued(upstream_factory: Callable[..., object]) -> None:
    up = await upstream_factory([send([OUTDATED, *LIVE[:2]])])  # type: ignore[operator]
    sink = Sink(until=2)
    calls: list[str] = []
    queued = asyncio.Event()

    async def queue_all() -> None:
        calls.append("try")
        if len(calls) == 1:
            raise OSError("database restarting")
        queued.set()

    fs = FirehoseStream(up.url, sink, lambda: sink.last, on_outdated_cursor=queue_all)
    task = asyncio.create_task(fs.run())
    try:
        await asyncio.wait_for(queued.wait(), 10)
        await asyncio.wait_for(sink.done.wait(), 10)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert calls == ["try", "try"]
