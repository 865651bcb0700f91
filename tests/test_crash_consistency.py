"""Crash consistency: `kill -9` a real `atmx index` at random moments, restart it, and the final index
is identical to the one an uninterrupted run builds from the same stream.

The stream is a backlog written once per session through the reference PDS (both record kinds,
creates, updates, deletes, other collections, deactivate/activate, handle changes, takedowns).
Each run gets a fresh database whose cursor is set just before the backlog, so every run replays
exactly the same events. The XMTP stage talks to a loopback node that knows no inbox, so every
XMTP binding ends `invalid/inbox_not_found` deterministically.

CI replays a small backlog in 10 trials; `ATMX_LONG=1` writes a longer one and runs 25 trials.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import libipld
import pytest
import websockets
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from devnet_harness import Account, Devnet, PdsClient, XrpcError, now_iso
from pg_fixtures import _with_database
from xmtp_node import XmtpNode

from atmx.indexer.repo.crypto import encode_base58btc
from atmx.indexer.store.database import apply_schema, create_pool

pytestmark = [pytest.mark.slow, pytest.mark.devnet]

LONG = os.environ.get("ATMX_LONG") == "1"
ACCOUNTS = 24 if LONG else 10
ROUNDS = 120 if LONG else 30  # one applyWrites (one commit) per account per round
TRIALS = 25 if LONG else 10
RUN_TIMEOUT = 300.0 if LONG else 120.0

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


def _inbox(rng: random.Random) -> dict[str, Any]:
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
            make = _inbox if collection == XMTP else _keypackage
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
                await pds.put_record(w.account, XMTP, "self", _inbox(rng), validate=False)
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


# --- running atmx ---


@contextlib.asynccontextmanager
async def fresh_database(server_dsn: str, start_cursor: int, upstream: str) -> AsyncIterator[str]:
    """A new database with the schema and the cursor set just before the backlog."""
    name = f"atmx_crash_{os.getpid()}_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = _with_database(server_dsn, name)
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


def atmx_env(devnet: Devnet, dsn: str, xmtp_url: str, data_dir: Path, *, relay: str | None = None,
             plc: str | None = None) -> dict[str, str]:  # fmt: skip
    return {
        **os.environ,
        "ATMX_DATABASE_URL": dsn,
        "ATMX_RELAY": relay or devnet.firehose_url,
        "ATMX_PLC_URL": plc or devnet.plc_url,
        "ATMX_HANDLE_RESOLVER": devnet.pds_url,
        "ATMX_ALLOW_INSECURE_HTTP": "1",
        "ATMX_XMTP_API": f"production={xmtp_url}",
        "ATMX_DATA_DIR": str(data_dir),
        "ATMX_STALL_TIMEOUT": "3600",
    }


def start_atmx(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "atmx.indexer.cli", "index"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


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


async def wait_settled(pool: asyncpg.Pool, backlog: Backlog, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT
    while not await settled(pool, backlog):
        assert proc.poll() is None, f"atmx exited with {proc.returncode}:\n{tail(log)}"
        assert time.monotonic() < deadline, f"not settled after {RUN_TIMEOUT}s:\n{tail(log)}"
        await asyncio.sleep(0.1)


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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


async def summary(pool: asyncpg.Pool) -> str:
    rejected = await pool.fetch("SELECT kind, reason, count(*) AS n FROM rejections GROUP BY 1, 2")
    resyncs = await pool.fetch("SELECT reason, attempts, count(*) AS n FROM resync_queue GROUP BY 1, 2")
    repairs = await pool.fetch("SELECT state, error, count(*) FROM backfill_repos GROUP BY 1, 2")
    rows = {"rejections": rejected, "resyncs": resyncs, "repairs": repairs}
    return ", ".join(f"{k} {[tuple(r) for r in v]}" for k, v in rows.items())


def diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    lines = []
    for table in ("accounts", "bindings"):
        left = {tuple(sorted(r.items())) for r in a[table]}
        right = {tuple(sorted(r.items())) for r in b[table]}
        lines += [f"{table} only in reference: {r}" for r in sorted(left - right)]
        lines += [f"{table} only in trial: {r}" for r in sorted(right - left)]
    return "\n".join(lines[:20])


# --- fixtures ---


@pytest.fixture(scope="session")
async def backlog(devnet: Devnet) -> Backlog:
    return await write_backlog(devnet, accounts=ACCOUNTS, rounds=ROUNDS)


@pytest.fixture(scope="session")
def xmtp_node() -> Iterator[XmtpNode]:
    with XmtpNode() as node:
        yield node


@pytest.fixture(scope="session")
async def reference(
    devnet: Devnet, backlog: Backlog, pg_server_dsn: str, xmtp_node: XmtpNode, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The index an uninterrupted `atmx index` builds from the backlog."""
    tmp = tmp_path_factory.mktemp("atmx-reference")
    async with fresh_database(pg_server_dsn, backlog.start_cursor, devnet.firehose_url) as dsn:
        pool = await create_pool(dsn, max_size=2)
        log = tmp / "atmx.log"
        proc = start_atmx(atmx_env(devnet, dsn, xmtp_node.url, tmp), log)
        try:
            await wait_settled(pool, backlog, proc, log)
            print(f"reference run: {await summary(pool)}")
            return await dump_index(pool, backlog.dids)
        finally:
            stop(proc)
            await pool.close()


# --- the tests ---


async def test_backlog_is_rich_enough(backlog: Backlog, reference: dict[str, Any]) -> None:
    """The reference index exercises what the trials must reproduce."""
    statuses = {(b["protocol"], b["status"], b["reason"]) for b in reference["bindings"]}
    assert ("xmtp", "invalid", "inbox_not_found") in statuses
    assert ("didcomm", "valid", None) in statuses
    assert {a["status"] for a in reference["accounts"]} >= {None, "takendown", "deactivated"}
    assert len(reference["accounts"]) >= ACCOUNTS - 1
    assert {"handle change", "deactivate/activate"} <= set(backlog.account_changes)
    seqs = f"seq {backlog.start_cursor + 1}..{backlog.end_seq}"
    print(f"backlog: {backlog.events} events, {seqs}, {backlog.account_changes}")


@pytest.mark.parametrize("trial", range(TRIALS))
async def test_kill_9_and_restart_gives_the_same_index(
    trial: int,
    devnet: Devnet,
    backlog: Backlog,
    reference: dict[str, Any],
    pg_server_dsn: str,
    xmtp_node: XmtpNode,
    tmp_path: Path,
) -> None:
    rng = random.Random(1000 + trial)
    span = backlog.end_seq - backlog.start_cursor
    # 1-3 kill points per trial: a cursor position inside the backlog, or (one trial in four) a
    # moment shortly after start, before or during the schema/cursor load
    kills = sorted(backlog.start_cursor + rng.randrange(1, span) for _ in range(rng.randint(1, 3)))
    early = rng.random() < 0.25
    # atmx takes the whole backlog in well under a second and saves its cursor once per batch, so
    # an unbounded run would be killed only after the end. A small in-flight bound (back-pressure,
    # as a slow database causes) spreads the batches over the stream: each kill then lands with
    # events received and processed but not yet written, and a batch's size varies by trial.
    # (the long backlog is 9x longer: smaller bounds would make a trial take many minutes)
    in_flight = rng.choice((16, 64, 256, 1024) if LONG else (1, 4, 16, 64))
    async with fresh_database(pg_server_dsn, backlog.start_cursor, devnet.firehose_url) as dsn:
        pool = await create_pool(dsn, max_size=2)
        env = atmx_env(devnet, dsn, xmtp_node.url, tmp_path) | {"ATMX_MAX_IN_FLIGHT": str(in_flight)}
        log = tmp_path / "atmx.log"
        killed_at: list[int] = []
        try:
            if early:
                proc = start_atmx(env, log)
                await asyncio.sleep(rng.uniform(0.2, 2.0))
                stop(proc, signal.SIGKILL)
                killed_at.append(await cursor_of(pool))
            for point in kills:
                proc = start_atmx(env, log)
                deadline = time.monotonic() + RUN_TIMEOUT
                while await cursor_of(pool) < point and proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                assert proc.poll() is None, f"atmx exited early:\n{tail(log)}"
                stop(proc, signal.SIGKILL)
                killed_at.append(await cursor_of(pool))
            proc = start_atmx(env, log)
            try:
                await wait_settled(pool, backlog, proc, log)
                got = await dump_index(pool, backlog.dids)
                print(f"trial {trial}: {await summary(pool)}")
            finally:
                stop(proc)
        finally:
            await pool.close()
    print(
        f"trial {trial}: in flight <= {in_flight}, aimed at {kills}, killed at cursor {killed_at}"
        f" of {backlog.start_cursor}..{backlog.end_seq}"
    )
    assert got == reference, diff(reference, got) + "\n" + tail(log)
