"""`atmx verify`: check every commit in a stream or a folder of captured frames.

An operator's diagnostic. Unlike the indexer it verifies every commit whatever the
collection, and reports counts by outcome instead of writing anything.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import websockets

from atmx.indexer.firehose.frames import CommitEvent, FrameError, SyncEvent, decode_frame
from atmx.indexer.firehose.stream import MAX_MESSAGE_BYTES, OPEN_TIMEOUT
from atmx.indexer.identity.resolver import IdentityResolver, ResolutionError
from atmx.indexer.repo.crypto import key_from_did_key
from atmx.indexer.repo.verify import VerificationError, verify_commit_message, verify_sync_message


@dataclass
class AuditReport:
    commits: int = 0
    verified: int = 0
    syncs: int = 0
    syncs_verified: int = 0
    frames: int = 0
    failed: Counter[str] = field(default_factory=Counter)

    def as_json(self) -> dict[str, Any]:
        return {
            "commits": self.commits,
            "verified": self.verified,
            "failed": dict(sorted(self.failed.items())),
            "syncs": self.syncs,
            "syncsVerified": self.syncs_verified,
            "frames": self.frames,
        }

    def as_text(self) -> str:
        lines = [
            f"frames:   {self.frames}",
            f"commits:  {self.commits}",
            f"verified: {self.verified}",
            f"syncs:    {self.syncs} ({self.syncs_verified} verified)",
        ]
        lines += [f"failed {reason}: {n}" for reason, n in sorted(self.failed.items())]
        return "\n".join(lines)


def frames_from_dir(path: Path) -> Iterable[bytes]:
    for file in sorted(path.glob("*.bin")):
        yield file.read_bytes()


class SourceUnavailable(Exception):
    """The stream could not be opened (refused, unknown host, not a websocket)."""


async def frames_from_url(url: str, *, idle: float, limit: int | None) -> AsyncIterator[bytes]:
    count = 0
    try:
        ws = await websockets.connect(url, max_size=MAX_MESSAGE_BYTES, compression=None, open_timeout=OPEN_TIMEOUT)
    except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
        if isinstance(exc, socket.gaierror):
            why = "unknown host"
        elif isinstance(exc, OSError) and exc.errno:
            why = os.strerror(exc.errno).lower()
        else:
            why = str(exc) or type(exc).__name__
        raise SourceUnavailable(f"cannot open {url}: {why}") from None
    async with ws:
        while limit is None or count < limit:
            try:
                async with asyncio.timeout(idle):
                    message = await ws.recv()
            except (TimeoutError, websockets.ConnectionClosed):
                return
            if isinstance(message, bytes):
                count += 1
                yield message


class Auditor:
    def __init__(self, resolver: IdentityResolver) -> None:
        self.resolver = resolver
        self.report = AuditReport()

    async def check(self, frame: bytes) -> None:
        self.report.frames += 1
        try:
            event = decode_frame(frame)
        except FrameError as exc:
            self.report.failed[f"frame:{exc.reason}"] += 1
            return
        if isinstance(event, CommitEvent):
            self.report.commits += 1
            did = event.repo
        elif isinstance(event, SyncEvent):
            self.report.syncs += 1
            did = event.did
        else:
            return
        now = datetime.now(UTC)
        for force in (False, True):
            try:
                info = await self.resolver.resolve_did(did, force_refresh=force)
            except ResolutionError as exc:
                self.report.failed[f"identity:{exc.reason}"] += 1
                return
            if info.signing_key is None:
                self.report.failed["no_signing_key"] += 1
                return
            key = key_from_did_key(info.signing_key)
            try:
                if isinstance(event, CommitEvent):
                    verify_commit_message(
                        did=did,
                        rev=event.rev,
                        commit_cid=event.commit,
                        blocks=event.blocks,
                        ops=event.ops,
                        prev_data=event.prev_data,
                        key=key,
                        now=now,
                    )
                else:
                    verify_sync_message(did=did, rev=event.rev, blocks=event.blocks, key=key, now=now)
            except VerificationError as exc:
                if exc.reason == "bad_signature" and not force:
                    continue  # the key may have rotated: refresh the DID document once
                self.report.failed[exc.reason] += 1
                return
            break
        if isinstance(event, CommitEvent):
            self.report.verified += 1
        else:
            self.report.syncs_verified += 1
