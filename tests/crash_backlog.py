"""The crash-trial backlog: a stream of realistic writes made once through the reference PDS,
and what the trials need around it (a fresh database whose cursor sits just before the backlog,
"settled", and the part of the index that must not depend on when atmx crashed).

Used by test_crash_consistency, test_upstream_faults and test_database_faults.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import libipld
import websockets
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from devnet_harness import Account, Devnet, PdsClient, XrpcError, now_iso
from pg_fixtures import with_database

from atmx.indexer.repo.crypto import encode_base58btc
from atmx.indexer.store.database import apply_schema, create_pool

XMTP = "org.xmtp.inbox"
DIDCOMM = "at.didcomm.keyPackage"
OTHER = ("app.bsky.feed.post", "app.bsky.feed.like", "com.example.note")


# --- the backlog ---


@dataclass
class Backlog:
    start_cursor: int  # seq just before the first backlog event
    end_seq: int  # seq of the last backlog event
    dids: list[str]
    events: int = 0
    account_changes: dict[str, int] = field(default_factory=dict)


def inbox_record(rng: random.Random) -> dict[str, Any]:
    return {
        "$type": XMTP,
        "id": rng.randbytes(32).hex(),
        "verificationSignature": base64.b64encode(rng.randbytes(64)).decode(),
        "createdAt": now_iso(),
    }


def _did_peer_2(rng: random.Random) -> str:
    """A real did:peer:2 with one X25519 key-agreement key (multicodec 0xec)."""
    key = X25519PrivateKey.from_private_bytes(rng.randbytes(32)).public_key()
    return "did:peer:2.E" + encode_base58btc(b"\xec\x01" + key.public_bytes(Encoding.Raw, PublicFormat.Raw))


def _keypackage(rng: random.Random) -> dict[str, Any]:
    return {
        "$type": DIDCOMM,
        "did": _did_peer_2(rng),
        "mediators": ["did:web:mediator.test"],
        "label": rng.choice(["phone", "laptop"]),
        "createdAt": now_iso(),
    }


def _other(collection: str, rng: random.Random) -> dict[str, Any]:
    return {"$type": collection, "text": f"n{rng.randrange(10**6)}", "createdAt": now_iso()}


class _Writer:
    """One account's side of the backlog: keeps track of what exists so every write is legal."""

    def __init__(self, pds: PdsClient, account: Account, rng: random.Random, changes: dict[str, int]) -> None:
        self.pds = pds
        self.account = account
        self.rng = rng
        self.changes = changes
        self.has: dict[str, bool] = {XMTP: False, DIDCOMM: False}
        self.others: list[tuple[str, str]] = []

    def _count(self, what: str) -> None:
        self.changes[what] = self.changes.get(what, 0) + 1

    async def step(self) -> None:
        rng = self.rng
        writes: list[dict[str, Any]] = []
        for collection in (XMTP, DIDCOMM):
            roll = rng.random()
            make = inbox_record if collection == XMTP else _keypackage
            if roll < 0.25:
                kind = "update" if self.has[collection] else "create"
                writes.append({"$type": f"com.atproto.repo.applyWrites#{kind}", "collection": collection,
                               "rkey": "self", "value": make(rng)})  # fmt: skip
                self.has[collection] = True
            elif roll < 0.35 and self.has[collection]:
                writes.append(
                    {"$type": "com.atproto.repo.applyWrites#delete", "collection": collection, "rkey": "self"}
                )
                self.has[collection] = False
            elif roll < 0.38:  # a record that is not at rkey self: ignored (and a malformed one, rejected)
                value = make(rng)
                if rng.random() < 0.5:
                    value["createdAt"] = "yesterday"
                at_self = not self.has[collection]
                writes.append({"$type": "com.atproto.repo.applyWrites#create", "collection": collection,
                               "rkey": "self" if at_self else f"o{secrets.token_hex(6)}", "value": value})  # fmt: skip
                self.has[collection] = True
        # only records of earlier commits are deleted: the PDS emits a create and a delete of one
        # path in a single commit as two ops on that path, which atmx refuses (`bad_ops`)
        earlier = len(self.others)
        for _ in range(rng.randrange(0, 3)):
            if earlier and rng.random() < 0.3:
                earlier -= 1
                collection, rkey = self.others.pop(rng.randrange(earlier + 1))
                writes.append({"$type": "com.atproto.repo.applyWrites#delete", "collection": collection, "rkey": rkey})
            else:
                collection, rkey = rng.choice(OTHER), f"r{secrets.token_hex(6)}"
                self.others.append((collection, rkey))
                writes.append({"$type": "com.atproto.repo.applyWrites#create", "collection": collection,
                               "rkey": rkey, "value": _other(collection, rng)})  # fmt: skip
        if not writes:
            collection = rng.choice(OTHER)
            writes.append({"$type": "com.atproto.repo.applyWrites#create", "collection": collection,
                           "value": _other(collection, rng)})  # fmt: skip
        await self.pds.apply_writes(self.account, writes)
        roll = rng.random()
        if roll < 0.04:  # deactivated right after a write: the #account event races the commit
            await self.pds.deactivate(self.account)
            await self.pds.activate(self.account)
            self._count("deactivate/activate")
        elif roll < 0.07:
            self.account = await self.pds.update_handle(self.account, f"h{secrets.token_hex(4)}.test")
            self._count("handle change")
        elif roll < 0.08:
            await self.pds.takedown(self.account.did)
            await self.pds.reverse_takedown(self.account.did)
            self._count("takedown/reversal")


async def _head_seq(devnet: Devnet, ready: asyncio.Event, seen: list[tuple[int, str]]) -> None:
    async with websockets.connect(devnet.firehose_url, max_size=None) as ws:
        ready.set()
        async for message in ws:
            assert isinstance(message, bytes)
            _header, body = libipld.decode_dag_cbor_multi(message)
            if isinstance(body, dict) and isinstance(body.get("seq"), int):
                seen.append((body["seq"], str(body.get("repo") or body.get("did"))))


async def write_backlog(
    devnet: Devnet, *, accounts: int, rounds: int, seed: int = 5, final_changes: bool = True
) -> Backlog:
    """Write the backlog through the PDS; a live firehose reader notes where it starts and ends.

    `final_changes` leaves one account taken down and one deactivated at the end.
    """
    rng = random.Random(seed)
    seen: list[tuple[int, str]] = []
    ready = asyncio.Event()
    reader = asyncio.create_task(_head_seq(devnet, ready, seen))
    await asyncio.wait_for(ready.wait(), 10)
    changes: dict[str, int] = {}
    async with devnet.client() as pds:
        writers = [
            _Writer(
                pds, await pds.create_account(f"c{secrets.token_hex(4)}.test"), random.Random(rng.random()), changes
            )
            for _ in range(accounts)
        ]
        for _ in range(rounds):
            await asyncio.gather(*(w.step() for w in writers))
        # the end state holds a taken-down and a deactivated account with bindings
        for w in writers[:2] if final_changes else []:
            if not w.has[XMTP]:
                await pds.put_record(w.account, XMTP, "self", inbox_record(rng), validate=False)
        if final_changes:
            await pds.takedown(writers[0].account.did)
            changes["final takedown"] = 1
            with contextlib.suppress(XrpcError):
                await pds.deactivate(writers[1].account)
                changes["final deactivation"] = 1
        # a marker event (from a throwaway account) tells when the reader has seen everything
        marker = await pds.create_account(f"m{secrets.token_hex(4)}.test")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and marker.did not in {did for _, did in seen}:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    assert seen and seen[-1][1] == marker.did, "the firehose did not deliver the whole backlog"
    return Backlog(seen[0][0] - 1, seen[-1][0], [w.account.did for w in writers], len(seen), changes)


# --- around the backlog ---


@contextlib.asynccontextmanager
async def fresh_database(server_dsn: str, start_cursor: int, upstream: str) -> AsyncIterator[str]:
    """A new database with the schema and the cursor set just before the backlog."""
    name = f"atmx_crash_{os.getpid()}_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = with_database(server_dsn, name)
    pool = await create_pool(dsn, max_size=2)
    try:
        await apply_schema(pool)
        await pool.execute("INSERT INTO cursors (upstream, seq) VALUES ($1, $2)", upstream, start_cursor)
    finally:
        await pool.close()
    try:
        yield dsn
    finally:
        admin = await asyncpg.connect(server_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def cursor_of(pool: asyncpg.Pool) -> int:
    seq = await pool.fetchval("SELECT max(seq) FROM cursors")
    return int(seq or 0)


async def settled(pool: asyncpg.Pool, backlog: Backlog) -> bool:
    """The whole backlog is indexed and every XMTP binding of it has had its check."""
    if await cursor_of(pool) < backlog.end_seq:
        return False
    pending = await pool.fetchval(
        "SELECT count(*) FROM bindings WHERE did = ANY($1::text[]) AND status = 'pending'", backlog.dids
    )
    if int(pending):
        return False
    # every queued repair (e.g. after a #sync) has been tried once; a taken-down repo stays queued
    untried = await pool.fetchval(
        "SELECT count(*) FROM resync_queue WHERE did = ANY($1::text[]) AND attempts = 0", backlog.dids
    )
    return int(untried) == 0


async def dump_index(pool: asyncpg.Pool, dids: list[str]) -> dict[str, Any]:
    """Everything about these DIDs that must not depend on when atmx crashed."""
    accounts = await pool.fetch(
        "SELECT did, handle, handle_verified, active, status, rev, data_cid, pds FROM accounts"
        " WHERE did = ANY($1::text[]) ORDER BY did",
        dids,
    )
    # not the binding's rev: a record proven by a fetch carries the rev of the repo when it was
    # fetched, which depends on when that happened; what it holds (cid, record, status) does not
    bindings = await pool.fetch(
        "SELECT did, protocol, uri, cid, status, reason, xmtp_inbox_id, record::text AS record FROM bindings"
        " WHERE did = ANY($1::text[]) ORDER BY did, protocol",
        dids,
    )
    return {"accounts": [dict(r) for r in accounts], "bindings": [dict(r) for r in bindings]}
