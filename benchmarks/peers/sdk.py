"""Peer: the atproto Python SDK's async firehose client, doing per event what its feed-generator
example does (parse the message into models, decode the commit's CAR, build a model of each
created record). Runs in its own virtualenv (the SDK pins its own libipld/pydantic):

    benchmarks/.cache/sdk-venv/bin/python benchmarks/peers/sdk.py ws://127.0.0.1:PORT LAST_SEQ

Prints `{"end": <wall time>, "events": n, "records": r}` once LAST_SEQ is handled, then waits to be stopped.
Must not import atmx (not installed in that environment).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from atproto import CAR, AsyncFirehoseSubscribeReposClient, models, parse_subscribe_repos_message


async def consume(url: str, last_seq: int) -> dict[str, Any]:
    client = AsyncFirehoseSubscribeReposClient(base_uri=url + "/xrpc")
    state: dict[str, float] = {"events": 0, "records": 0}

    async def on_message(message: Any) -> None:
        event = parse_subscribe_repos_message(message)
        state["events"] += 1
        if isinstance(event, models.ComAtprotoSyncSubscribeRepos.Commit) and event.blocks:
            car = CAR.from_bytes(event.blocks)
            for op in event.ops:
                if op.action == "create" and op.cid is not None:
                    raw = car.blocks.get(op.cid)
                    if raw is not None:
                        models.get_or_create(raw, strict=False)
                        state["records"] += 1
        if getattr(event, "seq", None) == last_seq:
            state["end"] = time.time()
            await client.stop()

    await client.start(on_message)
    return state


async def main(url: str, last_seq: int) -> None:
    print(json.dumps(await consume(url, last_seq)), flush=True)
    await asyncio.Event().wait()  # until the harness stops us, so it can read our CPU time


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
