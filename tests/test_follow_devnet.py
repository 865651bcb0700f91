"""Apps follow the directory, end to end: the reference PDS -> atmx (indexer + API) -> a consumer.

subscribeBindings sees every change in order in both framings and exactly once across a
reconnect; every proof getBindingProof serves verifies with @atproto/repo (no atmx code);
getBindingHistory keeps every version; requestIndex indexes with proof while no indexer runs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg
import libipld
import pytest
from devnet_harness import NODE, Devnet, PdsClient
from live_directory import NS, Directory, settings_for
from sample_records import handle, keypackage_record, xmtp_record

from atmx.api.app import create_app, run_api
from atmx.indexer.service import _request_indexer
from atmx.indexer.version import __version__

pytestmark = pytest.mark.devnet

VERIFY_PROOF = NODE.parents[3] / "verify_proof.mjs"  # tests/devnet/


Messages = list[tuple[str, dict[str, Any]]]


class Consumer:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.messages: Messages = []

    async def read_until(
        self, done: Callable[[list[tuple[str, dict[str, Any]]]], bool], deadline: float = 10.0
    ) -> None:
        end = time.monotonic() + deadline
        while not done(self.messages):
            msg = await self.ws.receive(timeout=max(0.1, end - time.monotonic()))
            if msg.type == aiohttp.WSMsgType.BINARY:
                header, body = libipld.decode_dag_cbor_multi(msg.data)
                self.messages.append((header["t"][1:] if header["op"] == 1 else "error", body))
            elif msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                payload = data.get("payload", data)
                kind = payload.pop("$type", "error").rsplit("#", 1)[-1]
                self.messages.append((kind, payload))
            else:
                raise AssertionError(f"stream ended: {msg.type}")


async def subscribe(directory: Directory, *, json_framing: bool = False, **params: Any) -> Consumer:
    url = directory.api.replace("http://", "ws://") + f"/xrpc/{NS}.subscribeBindings"
    ws = await directory.http.ws_connect(url, params=params, protocols=("xrpc.v1.json",) if json_framing else ())
    await asyncio.sleep(0.2)  # joined the hub before the writes begin
    return Consumer(ws)


def summary(messages: Messages, did: str) -> list[tuple[str, str]]:
    out = []
    for kind, body in messages:
        if body.get("did") != did:
            continue
        detail = {
            "binding": body.get("action", ""),
            "account": body.get("accountStatus", ""),
            "handle": body.get("handle", ""),
        }
        out.append((kind, detail.get(kind, "")))
    return out


async def test_a_consumer_sees_every_change_in_order_in_both_framings(directory: Directory, pds: PdsClient) -> None:
    cbor = await subscribe(directory)
    text = await subscribe(directory, json_framing=True)
    alice = await pds.create_account(handle())
    _, first = await pds.put_record(alice, "org.xmtp.inbox", "self", xmtp_record())
    await directory.until("the first record", lambda: directory.shows(alice.did, "xmtp", first))
    _, second = await pds.put_record(alice, "org.xmtp.inbox", "self", xmtp_record())
    await directory.until("the update", lambda: directory.shows(alice.did, "xmtp", second))
    await pds.delete_record(alice, "org.xmtp.inbox", "self")
    await directory.until("the delete", lambda: directory.shows(alice.did, "xmtp", None))
    await pds.takedown(alice.did)
    await pds.reverse_takedown(alice.did)
    renamed = handle()
    await pds.update_handle(alice, renamed)
    expected = [
        ("handle", alice.handle),
        ("binding", "create"),
        ("binding", "update"),
        ("binding", "delete"),
        ("account", "takendown"),
        ("account", "active"),
        ("handle", renamed),
    ]
    for consumer in (cbor, text):
        await consumer.read_until(lambda m: len(summary(m, alice.did)) >= len(expected))
        assert summary(consumer.messages, alice.did) == expected
        seqs = [b["seq"] for _, b in consumer.messages]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    creates = [b for k, b in cbor.messages if k == "binding" and b.get("action") == "create"]
    assert creates[0]["cid"] == first and creates[0]["binding"]["status"] == "pending"


async def test_a_consumer_that_reconnects_with_its_cursor_sees_each_change_once(
    directory: Directory, pds: PdsClient
) -> None:
    consumer = await subscribe(directory)
    accounts = [await pds.create_account(handle()) for _ in range(3)]
    for account in accounts[:2]:
        await pds.put_record(account, "at.didcomm.keyPackage", "self", keypackage_record())
    await consumer.read_until(lambda m: sum(1 for k, _ in m if k == "binding") >= 2)
    last = consumer.messages[-1][1]["seq"]
    await consumer.ws.close()
    await pds.put_record(accounts[2], "at.didcomm.keyPackage", "self", keypackage_record())
    await pds.put_record(accounts[0], "at.didcomm.keyPackage", "self", keypackage_record())
    again = await subscribe(directory, cursor=str(last))
    await again.read_until(lambda m: sum(1 for k, _ in m if k == "binding") >= 2)
    await asyncio.sleep(0.5)
    logged = [r["seq"] for r in await directory.pool.fetch("SELECT seq FROM changes ORDER BY seq")]
    seen = [b["seq"] for _, b in consumer.messages + again.messages]
    assert seen == logged[: len(seen)] and len(set(seen)) == len(seen)  # every change once, in order, no gap


def check_proofs(queries: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Run the reference implementation's verifyProofs over each proof."""
    lines = "".join(json.dumps(q) + "\n" for q in queries)
    out = subprocess.run(
        [str(NODE), str(VERIFY_PROOF)], input=lines, capture_output=True, text=True, timeout=60, check=True
    )
    return [json.loads(line) for line in out.stdout.splitlines()]


async def test_every_proof_served_verifies_with_the_reference_implementation(
    directory: Directory, pds: PdsClient
) -> None:
    alice, bob = await pds.create_account(handle()), await pds.create_account(handle())
    _, a_cid = await pds.put_record(alice, "org.xmtp.inbox", "self", xmtp_record())  # via the proof fetch
    await directory.until("alice", lambda: directory.shows(alice.did, "xmtp", a_cid))
    _, b_cid = await pds.put_record(bob, "at.didcomm.keyPackage", "self", keypackage_record())
    await directory.until("bob", lambda: directory.shows(bob.did, "didcomm", b_cid))
    _, a2_cid = await pds.put_record(alice, "org.xmtp.inbox", "self", xmtp_record())  # from the firehose diff
    await directory.until("alice updated", lambda: directory.shows(alice.did, "xmtp", a2_cid))
    queries = []
    for did, collection, cid in (
        (alice.did, "org.xmtp.inbox", a2_cid),
        (bob.did, "at.didcomm.keyPackage", b_cid),
    ):
        status, car, resp = await directory.get("getBindingProof", uri=f"at://{did}/{collection}/self")
        assert status == 200 and resp.headers["Atmx-Cid"] == cid
        assert resp.headers["Atmx-Pds"] and resp.headers["Atmx-Rev"]
        q = {
            "did": did,
            "collection": collection,
            "rkey": "self",
            "cid": cid,
            "didKey": resp.headers["Atmx-Signing-Key"],
        }
        queries.append({**q, "car": base64.b64encode(car).decode()})
    # the checker can fail: a proof presented for another record's CID does not verify
    queries.append({**queries[0], "cid": b_cid})
    assert check_proofs(queries) == [{"ok": True}, {"ok": True}, {"ok": False}]
    status, body, _ = await directory.get("getBindingProof", uri=f"at://{alice.did}/org.xmtp.inbox/nope")
    assert status == 400 and body["error"] == "ProofNotFound"


async def test_the_history_of_an_account_that_changed_its_key_twice_has_three_versions(
    directory: Directory, pds: PdsClient
) -> None:
    alice = await pds.create_account(handle())
    cids = []
    for _ in range(3):  # a key package, then two rotations of its did:peer:2 key
        _, cid = await pds.put_record(alice, "at.didcomm.keyPackage", "self", keypackage_record())
        await directory.until("the version", lambda cid=cid: directory.shows(alice.did, "didcomm", cid))
        cids.append(cid)
    status, body, _ = await directory.get("getBindingHistory", did=alice.did, protocol="didcomm")
    assert status == 200
    assert [(v["action"], v["cid"]) for v in body["versions"]] == [
        ("update", cids[2]),
        ("update", cids[1]),
        ("create", cids[0]),
    ]
    assert body["versions"][0]["binding"]["did"].startswith("did:peer:2")
    status, page, _ = await directory.get("getBindingHistory", did=alice.did, limit="2")
    assert len(page["versions"]) == 2 and "cursor" in page
    status, rest, _ = await directory.get("getBindingHistory", did=alice.did, cursor=page["cursor"])
    assert [v["cid"] for v in rest["versions"]] == [cids[0]] and "cursor" not in rest


async def test_request_index_indexes_with_proof_while_no_indexer_runs(devnet: Devnet, db_pool: asyncpg.Pool) -> None:
    settings = settings_for(devnet)
    indexer = _request_indexer(settings, db_pool, ())
    app = create_app(pool_provider=lambda: db_pool, version=__version__, request_indexer=indexer)
    runner = await run_api(app, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}/xrpc/{NS}.requestIndex"
    try:
        async with devnet.client() as pds, aiohttp.ClientSession() as http:
            carol = await pds.create_account(handle())
            _, cid = await pds.put_record(carol, "at.didcomm.keyPackage", "self", keypackage_record())
            async with http.post(url, json={"actor": carol.handle}) as resp:
                body = await resp.json()
            assert resp.status == 200 and body["indexed"] is True and body["did"] == carol.did
            assert body["identity"]["didcomm"]["cid"] == cid
            assert await db_pool.fetchval("SELECT count(*) FROM binding_proofs") == 1
            for bad in ({"actor": "not a handle!"}, {"actor": 5}, {}):
                async with http.post(url, json=bad) as resp:
                    assert resp.status == 400 and (await resp.json())["error"] == "InvalidRequest"
            async with http.get(url) as resp:
                assert resp.status == 405
            ghost = f"{handle()}"
            async with http.post(url, json={"actor": ghost}) as resp:
                body = await resp.json()
            assert resp.status == 200 and body == {"actor": ghost, "indexed": False, "reason": "handle_not_found"}
    finally:
        await runner.cleanup()
        await indexer.close()
