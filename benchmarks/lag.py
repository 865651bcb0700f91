"""Paced-mode lag: from the moment the replay server sends an XMTP inbox write to the moment
the new record is visible through atmx's API (`directory.atmx.getIdentity` shows its CID).

Only creates/updates of `org.xmtp.inbox/self` whose path is not written again within the next
`QUIET_SEQS` events are measured (a later write would hide the earlier one from the API).
The probe polls only DIDs with a write already due, every `POLL_S`, so it adds little load.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from libipld import decode_dag_cbor_multi, encode_cid

from .corpus import Corpus
from .measure import percentile

POLL_S = 0.01
QUIET_SEQS = 10_000


def _op_cid(frame: bytes, path: str) -> str | None:
    _header, body = decode_dag_cbor_multi(frame)
    for op in body["ops"]:
        if op["path"] == path and op.get("cid") is not None:
            return str(encode_cid(op["cid"]))
    return None


class LagProbe:
    def __init__(self, corpus: Corpus, api: str, limit: int, rate: float) -> None:
        self.api = api
        self.rate = rate
        writes = [m for m in corpus.meta["matched"] if m[0] <= limit and m[2] == "org.xmtp.inbox/self"]
        self.targets: dict[int, tuple[str, str]] = {}  # seq -> (did, cid)
        for i, (seq, did, path, action) in enumerate(writes):
            later = next((m[0] for m in writes[i + 1 :] if m[1] == did), None)
            if action != "delete" and (later is None or later - seq > QUIET_SEQS):
                cid = _op_cid(bytes(corpus.frame(seq - 1)), path)
                if cid is not None:
                    self.targets[seq] = (did, cid)
        self.visible: dict[int, float] = {}

    async def run(self, started: float) -> None:
        """Poll until cancelled; `due` writes are those whose seq the sender has reached."""
        pending = dict(self.targets)
        async with aiohttp.ClientSession() as http:
            while pending:
                # the replay is paced from its first frame, so seq s is sent around start + s / rate
                horizon = int((time.time() - started) * self.rate) + 1
                due = [(s, d, c) for s, (d, c) in pending.items() if s <= horizon]
                seen = await asyncio.gather(*(self._visible(http, d, c) for _, d, c in due))
                now = time.time()
                for (seq, _d, _c), ok in zip(due, seen, strict=True):
                    if ok:
                        self.visible[seq] = now
                        del pending[seq]
                await asyncio.sleep(POLL_S)

    async def _visible(self, http: aiohttp.ClientSession, did: str, cid: str) -> bool:
        try:
            async with http.get(f"{self.api}/xrpc/directory.atmx.getIdentity", params={"actor": did}) as resp:
                if resp.status != 200:
                    return False
                body: dict[str, Any] = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False
        xmtp = body.get("xmtp")
        return isinstance(xmtp, dict) and xmtp.get("cid") == cid

    async def settle(self, seconds: float) -> None:
        """Give the last writes a chance to show before summarising."""
        deadline = time.monotonic() + seconds
        while len(self.visible) < len(self.targets) and time.monotonic() < deadline:  # noqa: ASYNC110 - fed by run()
            await asyncio.sleep(0.05)

    def summary(self, sent: dict[str, float]) -> dict[str, Any]:
        lags = [self.visible[s] - sent[str(s)] for s in self.visible if str(s) in sent]
        return {
            "lag_samples": len(lags),
            "lag_targets": len(self.targets),
            "lag_p50_s": round(percentile(lags, 50), 3),
            "lag_p99_s": round(percentile(lags, 99), 3),
            "lag_max_s": round(max(lags), 3) if lags else float("nan"),
            "lags_s": [round(x, 4) for x in sorted(lags)],
        }
