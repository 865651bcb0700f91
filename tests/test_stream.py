"""The websocket loop against a real websocket server on loopback playing scripted scenarios."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from atmx.indexer import stream as stream_mod
from atmx.indexer.frames import Event, decode_frame, event_seq
from atmx.indexer.stream import FirehoseStream, backoff_delay

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
    def __init__(self, until: int) -> None:
        self.events: list[tuple[int | None, Event]] = []
        self.last: int | None = None
        self.until = until
        self.done = asyncio.Event()

    async def __call__(self, seq: int | None, ev: Event) -> None:
        self.events.append((seq, ev))
        if seq is not None:
            self.last = seq
        if len(self.events) >= self.until:
            self.done.set()


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
    before = stream_mod.metrics.FRAME_ERRORS.labels("bad_cbor")._value.get()
    await run_until(fs, sink)
    assert [s for s, _ in sink.events] == SEQS
    assert up.paths[1].endswith(f"?cursor={SEQS[4]}")
    assert stream_mod.metrics.FRAME_ERRORS.labels("bad_cbor")._value.get() == before + 1


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
    before = stream_mod.metrics.UPSTREAM_ERRORS.labels("OutdatedCursor")._value.get()
    await run_until(fs, sink)
    assert [s for s, _ in sink.events] == SEQS[:4]
    assert len(up.paths) == 1
    assert stream_mod.metrics.UPSTREAM_ERRORS.labels("OutdatedCursor")._value.get() == before + 1


async def test_silent_socket_is_reconnected(upstream_factory: Callable[..., object]) -> None:
    up = await upstream_factory([send(LIVE[:2]), send(LIVE[2:4])])  # type: ignore[operator]
    sink = Sink(until=4)
    fs = FirehoseStream(up.url, sink, lambda: sink.last, stall_timeout=0.3)
    await run_until(fs, sink)
    assert len(up.paths) == 2 and up.paths[1].endswith(f"?cursor={SEQS[1]}")


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
