"""The websockets-library transport ceiling: receive every frame with `websockets` and discard it.

    python -m benchmarks.peers.ceiling_websockets ws://127.0.0.1:PORT LAST_SEQ

What a Python consumer built on the websockets library (asyncio client, no compression, no
size limit) cannot beat; atmx replaced that library's frame parser with its own (see
indexer/websocket.py), and `ceiling` measures that one. Prints `{"end": ..., "frames": n}`
after LAST_SEQ messages, then waits to be stopped.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from websockets.asyncio.client import connect


async def consume(url: str, count: int) -> None:
    n = 0
    async with connect(url + "/xrpc/com.atproto.sync.subscribeRepos", max_size=None, compression=None) as ws:
        while n < count:
            await ws.recv(decode=False)
            n += 1
        print(json.dumps({"end": time.time(), "frames": n}), flush=True)
        await asyncio.Event().wait()  # until the harness stops us, so it can read our CPU time


if __name__ == "__main__":
    asyncio.run(consume(sys.argv[1], int(sys.argv[2])))
