"""Many subscribeBindings consumers in one process, for the stream benchmarks.

    python -m benchmarks.stream_consumers ws://127.0.0.1:2584 1000 [--cursor N] [--until SEQ] [--seconds S] [--json]

Every consumer reads its stream and notes when each change arrived (seq, time); the first one also
decodes each change's did, uri and action, so the harness can tell which firehose event caused it.
Frames are decoded with libipld (the header and the seq), which keeps the client light on a machine
it shares with the server. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import aiohttp
import libipld

PATH = "/xrpc/directory.atmx.subscribeBindings"


async def consume(
    session: aiohttp.ClientSession,
    url: str,
    *,
    recorder: bool,
    json_framing: bool,
    until: int | None,
    deadline: float,
    out: dict[str, Any],
) -> None:
    protocols = ("xrpc.v1.json",) if json_framing else ()
    async with session.ws_connect(url, protocols=protocols, max_msg_size=0, heartbeat=None) as ws:
        out["connected"] += 1
        arrivals: list[tuple[int, float]] = out["arrivals"]
        last = 0
        while time.time() < deadline:
            try:
                msg = await ws.receive(timeout=max(0.1, deadline - time.time()))
            except TimeoutError:
                break
            now = time.time()
            if msg.type == aiohttp.WSMsgType.BINARY:
                header, body = libipld.decode_dag_cbor_multi(msg.data)
                if header.get("op") != 1:
                    out["errors"].append(body.get("error"))
                    break
                kind = header["t"]
            elif msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                if data.get("$type") == "error":
                    out["errors"].append(data.get("error"))
                    break
                body = data["payload"]
                kind = "#" + body["$type"].rsplit("#", 1)[1]
            else:
                out["closed_early"] += 1
                return
            seq = body.get("seq", 0)
            last = seq or last
            if kind == "#binding":
                arrivals.append((seq, now))
                if recorder:
                    out["changes"].append((seq, body["did"], body["uri"], body["action"]))
            out["received"] += 1
            if until is not None and last >= until:
                break


async def main_async(
    base: str, count: int, cursor: int | None, until: int | None, seconds: float, json_framing: bool
) -> None:
    url = base + PATH + (f"?cursor={cursor}" if cursor is not None else "")
    out: dict[str, Any] = {
        "connected": 0,
        "closed_early": 0,
        "received": 0,
        "errors": [],
        "arrivals": [],
        "changes": [],
    }
    deadline = time.time() + (seconds or 3600)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.perf_counter()
        tasks = [
            asyncio.create_task(
                consume(
                    session, url, recorder=i == 0, json_framing=json_framing, until=until, deadline=deadline, out=out
                )
            )
            for i in range(count)
        ]
        await asyncio.gather(*tasks, return_exceptions=True)
        out["seconds"] = time.perf_counter() - t0
    if cursor is not None:  # a replay: the arrival list is only needed for the live fan-out
        out["arrivals"] = []
        out["changes"] = []
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stream_consumers")
    p.add_argument("base")
    p.add_argument("count", type=int)
    p.add_argument("--cursor", type=int)
    p.add_argument("--until", type=int)
    p.add_argument("--seconds", type=float, default=0.0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    asyncio.run(main_async(a.base, a.count, a.cursor, a.until, a.seconds, a.json))


if __name__ == "__main__":
    main()
