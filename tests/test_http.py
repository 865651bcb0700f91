"""indexer/identity/http.py: capped body reads against a real loopback server."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from atmx.indexer.backfill.job import MAX_BODY, FetchError, _read_body
from atmx.indexer.identity.http import BodyTooLarge, read_capped


async def _sized(request: web.Request) -> web.StreamResponse:
    return web.Response(body=b"x" * int(request.query["n"]))


async def _streamed(request: web.Request) -> web.StreamResponse:
    # chunked: no Content-Length, so the cap has to be enforced while reading
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for _ in range(int(request.query["chunks"])):
        await resp.write(b"y" * 4096)
    await resp.write_eof()
    return resp


async def _bomb(request: web.Request) -> web.StreamResponse:
    # 1 MiB of zeros in ~1 KiB on the wire
    body = gzip.compress(b"\0" * (1 << 20))
    return web.Response(body=body, headers={"Content-Encoding": "gzip"})


async def _huge(request: web.Request) -> web.StreamResponse:
    # declares more than the backfill cap; the reader must give up on the header alone
    resp = web.StreamResponse()
    resp.content_length = MAX_BODY + 1
    await resp.prepare(request)
    await resp.write(b"z" * 1024)
    return resp


@pytest.fixture
async def base() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/sized", _sized)
    app.router.add_get("/streamed", _streamed)
    app.router.add_get("/bomb", _bomb)
    app.router.add_get("/huge", _huge)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}"
    await server.close()


async def test_read_capped_reads_bodies_up_to_the_cap(base: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/sized", params={"n": "100"}) as resp:
            assert await read_capped(resp, 100) == b"x" * 100
        async with session.get(f"{base}/streamed", params={"chunks": "2"}) as resp:
            assert await read_capped(resp, 8192) == b"y" * 8192


async def test_read_capped_refuses_a_declared_length_over_the_cap_before_reading(base: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/sized", params={"n": "101"}) as resp:
        with pytest.raises(BodyTooLarge) as err:
            await read_capped(resp, 100)
        assert err.value.size == 101 and "101 bytes exceeds 100" in str(err.value)
        assert not resp.content.at_eof()  # nothing was read


async def test_read_capped_counts_streamed_and_decompressed_bytes(base: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/streamed", params={"chunks": "100"}) as resp:
            with pytest.raises(BodyTooLarge):
                await read_capped(resp, 8192)
        async with session.get(f"{base}/bomb") as resp:
            assert resp.content_length is not None and resp.content_length < 8192
            with pytest.raises(BodyTooLarge):
                await read_capped(resp, 8192)


async def test_backfill_read_body_keeps_its_fetch_error(base: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/sized", params={"n": "10"}) as resp:
            assert await _read_body(resp) == b"x" * 10
        async with session.get(f"{base}/huge") as resp:
            with pytest.raises(FetchError) as err:
                await _read_body(resp)
    assert err.value.reason == "too_large" and not err.value.retriable
