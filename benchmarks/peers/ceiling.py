"""The transport ceiling: receive every frame from the replay server and discard it.

    python -m benchmarks.peers.ceiling ws://127.0.0.1:PORT LAST_SEQ

Prints `{"end": <wall time>, "frames": n}` after `LAST_SEQ` frames, then exits. Same websocket
client library and settings as atmx's stream loop (websockets, no compression).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from websockets.asyncio.client import connect


async def consume(url: str, count: int) -> dict[str, float]:
    n = 0
    async with connect(url + "/xrpc/com.atproto.sync.subscribeRepos", max_size=None, compression=None) as ws:
        while n < count:
            await ws.recv(decode=False)
            n += 1
    return {"end": time.time(), "frames": n}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(consume(sys.argv[1], int(sys.argv[2])))), flush=True)
