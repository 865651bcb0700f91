"""End to end: the reference PDS and PLC on loopback -> atmx (indexer + API) -> answers over HTTP.

Every step writes through the real PDS, the event travels the real firehose, atmx verifies
it against the real PLC, and the test reads the answer from the real API.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from devnet_harness import Account, Devnet, PdsClient, _free_port
from live_atmx import DEADLINE, Atmx
from sample_records import handle, keypackage_record, xmtp_record
from seed import seed_account, seed_didcomm

from atmx.api.app import create_app, run_api
from atmx.indexer.config import Settings
from atmx.indexer.service import Indexer, start_api
from atmx.indexer.store.index_store import Store
from atmx.indexer.store.xmtp_store import XmtpStore
from atmx.indexer.version import __version__

pytestmark = pytest.mark.devnet


@pytest.fixture
async def atmx(devnet: Devnet, db_pool: asyncpg.Pool) -> AsyncIterator[Atmx]:
    settings = Settings(
        relay=devnet.firehose_url,
        plc_url=devnet.plc_url,
        handle_resolver=devnet.pds_url,
        allow_insecure_http=True,
        stall_timeout=3600,
    )
    async with aiohttp.ClientSession() as session:
        indexer = Indexer(settings, Store(db_pool), session)
        await indexer.start()
        task = asyncio.create_task(indexer.run())
        runner = await run_api(create_app(pool_provider=lambda: db_pool, version=__version__), "127.0.0.1", 0)
        host, port = runner.addresses[0][:2]
        try:
            await asyncio.wait_for(indexer.stream.connected.wait(), 10)
            yield Atmx(f"http://{host}:{port}", session, db_pool, indexer, [])
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await runner.cleanup()


async def test_lifecycle_of_both_record_kinds(atmx: Atmx, pds: PdsClient) -> None:
    alice: Account = await pds.create_account(handle())

    # 1. an XMTP binding appears, pending until the XMTP check, with a verified handle
    first = xmtp_record()
    uri, cid = await pds.put_record(alice, "org.xmtp.inbox", "self", first)

    async def xmtp_shown() -> bool:
        status, body = await atmx.identity(alice.handle)
        return status == 200 and body.get("xmtp", {}).get("cid") == cid

    await atmx.until("the new XMTP binding", xmtp_shown)
    status, body = await atmx.identity(alice.did)
    assert status == 200 and body["did"] == alice.did and body["handle"] == alice.handle
    assert body["accountStatus"] == "active"
    assert body["xmtp"]["inboxId"] == first["id"] and body["xmtp"]["status"] == "pending"
    assert body["xmtp"]["uri"] == uri == f"at://{alice.did}/org.xmtp.inbox/self"
    assert "didcomm" not in body
    # pending is not verified: the inbox resolves to nobody unless asked for unverified
    _, inbox = await atmx.xrpc("directory.atmx.resolveXmtpInbox", inboxId=first["id"])
    assert inbox["accounts"] == []
    _, inbox = await atmx.xrpc("directory.atmx.resolveXmtpInbox", inboxId=first["id"], includeUnverified="true")
    assert [a["did"] for a in inbox["accounts"]] == [alice.did]

    # 2. a DIDComm key package
    kp = keypackage_record()
    _, kp_cid = await pds.put_record(alice, "at.didcomm.keyPackage", "self", kp)

    async def didcomm_shown() -> bool:
        _, body = await atmx.identity(alice.did)
        return body.get("didcomm", {}).get("cid") == kp_cid

    await atmx.until("the DIDComm key package", didcomm_shown)
    _, body = await atmx.identity(alice.did)
    assert body["didcomm"]["did"] == kp["did"] and body["didcomm"]["status"] == "valid"
    assert body["didcomm"]["mediators"] == kp["mediators"] and body["didcomm"]["label"] == "phone"

    # 3. update the XMTP record: the new inbox replaces the old one
    second = xmtp_record()
    _, cid2 = await pds.put_record(alice, "org.xmtp.inbox", "self", second)

    async def xmtp_updated() -> bool:
        _, body = await atmx.identity(alice.did)
        return body.get("xmtp", {}).get("cid") == cid2

    await atmx.until("the updated XMTP binding", xmtp_updated)
    _, inbox = await atmx.xrpc("directory.atmx.resolveXmtpInbox", inboxId=first["id"], includeUnverified="true")
    assert inbox["accounts"] == []

    # 4. an unrelated record of a tracked account: its commit is verified and moves the chain, nothing else
    rev_before = await atmx.pool.fetchval("SELECT rev FROM accounts WHERE did = $1", alice.did)
    await pds.create_post(alice, "hello")

    async def chain_moved() -> bool:
        rev = await atmx.pool.fetchval("SELECT rev FROM accounts WHERE did = $1", alice.did)
        return bool(rev and rev > rev_before)

    await atmx.until("the post's commit verified", chain_moved)
    _, body = await atmx.identity(alice.did)
    assert body["xmtp"]["cid"] == cid2

    # 5. delete the key package
    await pds.delete_record(alice, "at.didcomm.keyPackage", "self")

    async def didcomm_gone() -> bool:
        _, body = await atmx.identity(alice.did)
        return "didcomm" not in body and "xmtp" in body

    await atmx.until("the key package deleted", didcomm_gone)

    # 6. a malformed record is stored with its reason and never served as valid
    bad = xmtp_record()
    bad["id"] = bad["id"].upper()
    _, cid3 = await pds.put_record(alice, "org.xmtp.inbox", "self", bad)

    async def invalid_shown() -> bool:
        _, body = await atmx.identity(alice.did)
        return body.get("xmtp", {}).get("cid") == cid3

    await atmx.until("the malformed record", invalid_shown)
    _, body = await atmx.identity(alice.did)
    assert body["xmtp"]["status"] == "invalid" and body["xmtp"]["reason"] == "bad_inbox_id"

    # 7. deleting the last binding makes the identity unknown
    await pds.delete_record(alice, "org.xmtp.inbox", "self")

    async def all_gone() -> bool:
        status, body = await atmx.identity(alice.did)
        return status == 400 and body["error"] == "IdentityNotFound"

    await atmx.until("no bindings left", all_gone)
    print(f"API caught up after each step in at most {max(atmx.latencies):.3f}s (steps: {len(atmx.latencies)})")
    assert max(atmx.latencies) < DEADLINE


async def test_handle_change_and_account_status(atmx: Atmx, pds: PdsClient) -> None:
    bob = await pds.create_account(handle())
    _, cid = await pds.put_record(bob, "org.xmtp.inbox", "self", xmtp_record())

    async def visible_as(actor: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            status, body = await atmx.identity(actor)
            return status == 200 and body.get("xmtp", {}).get("cid") == cid

        return check

    async def hidden_as(actor: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            status, body = await atmx.identity(actor)
            return status == 400 and body.get("error") == "IdentityNotFound"

        return check

    await atmx.until("bob indexed", await visible_as(bob.handle))

    # handle change: #identity -> re-resolve and re-check both ways
    old = bob.handle
    bob = await pds.update_handle(bob, handle())
    await atmx.until("bob under his new handle", await visible_as(bob.handle))
    await atmx.until("the old handle forgotten", await hidden_as(old))
    _, body = await atmx.identity(bob.did)
    assert body["handle"] == bob.handle

    # deactivate hides, activate restores
    await pds.deactivate(bob)
    await atmx.until("deactivated bob hidden", await hidden_as(bob.did))
    status, body = await atmx.xrpc("directory.atmx.listBindings", protocol="xmtp", limit=1000)
    assert status == 200
    assert bob.did not in {b["did"] for b in body["bindings"]}
    await pds.activate(bob)
    await atmx.until("reactivated bob visible", await visible_as(bob.did))

    # a takedown hides, reversing it restores
    await pds.takedown(bob.did)
    await atmx.until("taken-down bob hidden", await hidden_as(bob.did))
    await pds.reverse_takedown(bob.did)
    await atmx.until("restored bob visible", await visible_as(bob.did))
    print(f"API caught up after each step in at most {max(atmx.latencies):.3f}s (steps: {len(atmx.latencies)})")
    assert max(atmx.latencies) < DEADLINE


async def test_cursor_is_saved_and_health_reports_it(atmx: Atmx, pds: PdsClient) -> None:
    carol = await pds.create_account(handle())
    await pds.put_record(carol, "at.didcomm.keyPackage", "self", keypackage_record())

    async def cursor_saved() -> bool:
        status, body = await atmx.xrpc("_health")
        return (
            status == 200 and body["cursor"] is not None and body["cursor"] >= atmx.indexer.pipeline.mark.last_received
        )

    # quiet stretches still save the cursor at least once a second
    await atmx.until("the cursor saved", cursor_saved)
    _, body = await atmx.xrpc("_health")
    assert body["version"] == __version__ and 0 <= body["lagSeconds"] < 60


async def test_xmtp_binding_pending_verified_then_invalid(
    atmx: Atmx, pds: PdsClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real libxmtp signs the DID; the API shows pending, then verified, then invalid after revocation."""
    from xmtp_libxmtp import LibxmtpInbox
    from xmtp_node import XmtpNode

    from atmx.indexer.service import xmtp_verifier

    with XmtpNode() as node:
        inbox = await LibxmtpInbox.create(node.url, tmp_path)
        spare = await inbox.add_installation()  # revokes the signing one later
        signer = inbox.installations[0]
        dora = await pds.create_account(handle())
        _, cid = await pds.put_record(dora, "org.xmtp.inbox", "self", inbox.inbox_record(dora.did, signer))

        async def status_is(status: str) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                _, body = await atmx.identity(dora.did)
                return body.get("xmtp", {}).get("cid") == cid and body["xmtp"]["status"] == status

            return check

        # repo-verified, not yet checked against the XMTP network
        await atmx.until("the binding pending", await status_is("pending"))
        _, found = await atmx.xrpc("directory.atmx.resolveXmtpInbox", inboxId=inbox.inbox_id)
        assert found["accounts"] == []

        settings = Settings(xmtp_api=f"production={node.url}", xmtp_recheck=3600)
        async with xmtp_verifier(settings, XmtpStore(atmx.pool)) as verifier:
            task = asyncio.create_task(verifier.run(idle=0.05))
            try:
                await atmx.until("the binding verified", await status_is("verified"))
                _, body = await atmx.identity(dora.did)
                assert body["xmtp"]["env"] == "production"
                assert body["xmtp"]["installationId"] == signer.id.hex()
                assert body["xmtp"]["verifiedAt"]
                _, found = await atmx.xrpc("directory.atmx.resolveXmtpInbox", inboxId=inbox.inbox_id)
                assert [a["did"] for a in found["accounts"]] == [dora.did]

                # revoke the signing installation through libxmtp, then ask for a recheck
                await inbox.revoke(signer, via=spare)
                assert await XmtpStore(atmx.pool).request_xmtp_recheck(inbox.inbox_id) == 1
                await atmx.until("the binding invalid", await status_is("invalid"))
                _, body = await atmx.identity(dora.did)
                assert body["xmtp"]["reason"] == "no_matching_installation" and "verifiedAt" not in body["xmtp"]
                _, found = await atmx.xrpc("directory.atmx.resolveXmtpInbox", inboxId=inbox.inbox_id)
                assert found["accounts"] == []
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                inbox.close()


async def test_the_api_answers_a_handle_only_with_the_account_it_resolves_to_now(
    devnet: Devnet, pds: PdsClient, db_pool: asyncpg.Pool
) -> None:
    alice = await pds.create_account(handle())
    bob = await pds.create_account(handle())
    taken = alice.handle
    alice = await pds.update_handle(alice, handle())  # the name is free again...
    bob = await pds.update_handle(bob, taken)  # ...and now bob's
    # An index that missed the move (no #identity for alice reached it): it still says `taken` is alice.
    await seed_account(db_pool, alice.did, handle=taken)
    await seed_didcomm(db_pool, alice.did)
    settings = Settings(
        plc_url=devnet.plc_url,
        handle_resolver=devnet.pds_url,
        allow_insecure_http=True,
        listen=f"127.0.0.1:{_free_port()}",
    )
    index_only = await run_api(create_app(pool_provider=lambda: db_pool, version=__version__), "127.0.0.1", 0)
    served = await start_api(settings, db_pool)
    try:
        async with aiohttp.ClientSession() as session:

            async def identity(runner: web.AppRunner, actor: str) -> tuple[int, dict[str, Any]]:
                host, port = runner.addresses[0][:2]
                url = f"http://{host}:{port}/xrpc/directory.atmx.getIdentity"
                async with session.get(url, params={"actor": actor}) as resp:
                    return resp.status, await resp.json()

            # the attack: the index's word alone names the former owner
            assert (await identity(index_only, taken))[1]["did"] == alice.did
            # atmx serve asks the handle's domain (here the PDS's resolveHandle) before answering
            status, body = await identity(served, taken)
            assert (status, body["error"]) == (400, "IdentityNotFound")
            assert (await identity(served, alice.did))[1]["did"] == alice.did  # by DID: unchanged
            # once the index knows bob holds it, the handle answers with bob
            await db_pool.execute(
                "UPDATE accounts SET handle = NULL, handle_verified = false WHERE did = $1", alice.did
            )
            await seed_account(db_pool, bob.did, handle=taken)
            await seed_didcomm(db_pool, bob.did)
            status, body = await identity(served, taken.upper())
            assert (status, body["did"], body["handle"]) == (200, bob.did, taken)
    finally:
        await served.cleanup()
        await index_only.cleanup()
