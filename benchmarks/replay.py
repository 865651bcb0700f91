"""Loopback relay stand-in: replays a corpus over `subscribeRepos`, and serves its DID documents.

    python -m benchmarks.replay --corpus benchmarks/.cache/corpus-... [--rate 2000] [--limit N]

Prints one JSON line `{"ws": ..., "plc": ..., "stats": ...}` once both listen, then serves until
killed. Two modes: as fast as the consumer reads (websocket backpressure paces the sender),
or paced at `--rate` events/s. `?cursor=N` resumes after seq N; without a cursor the whole
corpus is sent (a benchmark wants all of it; a live relay would start at the tip). When the
corpus is exhausted the connection stays open and idle, as a relay's would.

The PLC stand-in (aiohttp) answers `GET /<did>` with the account's DID document and
`/xrpc/com.atproto.identity.resolveHandle` for the corpus handles; `GET /_bench/stats` gives
per-connection send times (wall clock), including the send time of every matched event.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiohttp import web
from websockets.asyncio.server import ServerConnection, serve

from .corpus import Corpus, did_document


class Replay:
    def __init__(self, corpus: Corpus, *, rate: float | None = None, limit: int | None = None) -> None:
        self.corpus = corpus
        self.rate = rate
        self.limit = min(limit or corpus.count, corpus.count)
        self.matched_seqs = {int(m[0]) for m in corpus.meta["matched"]}
        self.connections: list[dict[str, Any]] = []
        self.accounts = corpus.accounts()
        self.docs: dict[str, bytes] = {}  # filled once the PDS stand-in's address is known
        self.handles = {a.handle: a.did for a in self.accounts}
        proofs = corpus.path / "proofs.json"
        # did -> [(seq, {path: CAR})]: the account's proofs after each of its commits, in seq order
        self.proofs: dict[str, list[list[Any]]] = json.loads(proofs.read_text()) if proofs.exists() else {}
        self.position = 0  # the highest seq sent: the stand-in PDS answers as of this event

    def serve_docs(self, pds: str) -> None:
        self.docs = {a.did: json.dumps(did_document(a, pds)).encode() for a in self.accounts}

    async def handler(self, ws: ServerConnection) -> None:
        query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)
        cursor = int(query["cursor"][0]) if "cursor" in query else 0
        conn: dict[str, Any] = {"cursor": cursor, "opened": time.time(), "sent": 0, "matched_sent": {}}
        self.connections.append(conn)
        start = min(cursor, self.limit)  # seq s is frame index s - 1; resume after `cursor`
        conn["first_sent"] = time.time()
        if self.rate:
            await self._send_paced(ws, start, conn, self.rate)
        else:
            await self._send_fast(ws, start, conn)
        conn["last_sent"] = time.time()
        await ws.wait_closed()
        conn["closed"] = time.time()

    async def _send_paced(self, ws: ServerConnection, start: int, conn: dict[str, Any], rate: float) -> None:
        frame, matched, sent_at = self.corpus.frame, self.matched_seqs, conn["matched_sent"]
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for k, index in enumerate(range(start, self.limit)):
            delay = t0 + k / rate - loop.time()
            if delay > 0.0005:
                await asyncio.sleep(delay)
            await ws.send(frame(index))
            self.position = max(self.position, index + 1)
            if index + 1 in matched:
                sent_at[index + 1] = time.time()
            conn["sent"] = k + 1

    async def _send_fast(self, ws: ServerConnection, start: int, conn: dict[str, Any]) -> None:
        """As fast as the consumer reads: pre-framed messages written in 256 KiB batches, so that
        the server's own per-message cost does not become the ceiling being measured."""
        frame, matched, sent_at = self.corpus.frame, self.matched_seqs, conn["matched_sent"]
        transport = ws.transport
        batch: list[bytes | memoryview] = []
        size = 0
        matched_in_batch: list[int] = []
        for index in range(start, self.limit):
            payload = frame(index)
            batch.append(_binary_frame_header(len(payload)))
            batch.append(payload)
            size += len(payload)
            if index + 1 in matched:
                matched_in_batch.append(index + 1)
            if size >= 256 * 1024 or index + 1 == self.limit:
                transport.writelines(batch)
                now = time.time()
                for seq in matched_in_batch:
                    sent_at[seq] = now
                conn["sent"] = index + 1 - start
                self.position = max(self.position, index + 1)
                batch, size, matched_in_batch = [], 0, []
                await ws.drain()  # websockets' flow control: wait while the consumer's window is full

    # --- PLC stand-in ---

    async def did_doc(self, request: web.Request) -> web.Response:
        doc = self.docs.get(request.match_info["did"])
        if doc is None:
            return web.json_response({"message": "DID not registered"}, status=404)
        return web.Response(body=doc, content_type="application/json")

    async def resolve_handle(self, request: web.Request) -> web.Response:
        did = self.handles.get(request.query.get("handle", "").lower())
        if did is None:
            return web.json_response({"error": "InvalidRequest", "message": "Unable to resolve handle"}, status=400)
        return web.json_response({"did": did})

    # --- PDS stand-in: a messaging account's records with proof, as of the replay's position ---

    async def get_record(self, request: web.Request) -> web.Response:
        q = request.query
        versions = self.proofs.get(q.get("did", ""), [])
        # the repo as it stands after the last of its commits the relay has sent
        at = bisect.bisect_right([seq for seq, _ in versions], self.position) - 1
        version = versions[max(at, 0)][1] if versions else {}
        car = version.get(f"{q.get('collection')}/{q.get('rkey')}")
        if car is None:
            return web.json_response({"error": "RecordNotFound", "message": "no proof kept"}, status=400)
        return web.Response(body=base64.b64decode(car), content_type="application/vnd.ipld.car")

    async def list_records(self, _request: web.Request) -> web.Response:
        return web.json_response({"records": []})  # the corpus has no many-record families

    async def stats(self, _request: web.Request) -> web.Response:
        conns = [{**c, "matched_sent": {str(k): v for k, v in c["matched_sent"].items()}} for c in self.connections]
        return web.json_response({"limit": self.limit, "connections": conns})

    def plc_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/_bench/stats", self.stats)
        app.router.add_get("/xrpc/com.atproto.identity.resolveHandle", self.resolve_handle)
        app.router.add_get("/xrpc/com.atproto.sync.getRecord", self.get_record)
        app.router.add_get("/xrpc/com.atproto.repo.listRecords", self.list_records)
        app.router.add_get("/{did}", self.did_doc)
        return app


def _binary_frame_header(n: int) -> bytes:
    """RFC 6455 header of an unmasked, final binary frame of n bytes (server to client)."""
    if n < 126:
        return bytes((0x82, n))
    if n < 1 << 16:
        return bytes((0x82, 126)) + n.to_bytes(2, "big")
    return bytes((0x82, 127)) + n.to_bytes(8, "big")


async def serve_forever(corpus: Corpus, rate: float | None, limit: int | None, port: int, plc_port: int) -> None:
    replay = Replay(corpus, rate=rate, limit=limit)
    runner = web.AppRunner(replay.plc_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", plc_port)
    await site.start()
    plc = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    replay.serve_docs(plc)  # the same loopback server is every account's PDS
    async with serve(replay.handler, "127.0.0.1", port, compression=None, max_size=None, ping_interval=None) as server:
        ws_port = next(iter(server.sockets)).getsockname()[1]
        ws = f"ws://127.0.0.1:{ws_port}"
        print(json.dumps({"ws": ws, "plc": plc, "stats": plc + "/_bench/stats", "frames": replay.limit}), flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--rate", type=float, default=None, help="events/s (default: as fast as the consumer reads)")
    p.add_argument("--limit", type=int, default=None, help="replay only the first N events")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--plc-port", type=int, default=0)
    a = p.parse_args(argv)
    try:
        asyncio.run(serve_forever(Corpus(a.corpus), a.rate, a.limit, a.port, a.plc_port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
