"""The loopback PLC + PDS harness: start-up, XRPC driving, firehose frames, PLC documents."""

from __future__ import annotations

import asyncio
import secrets
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import libipld
import pytest
from devnet_harness import (
    Devnet,
    DevnetError,
    PdsClient,
    XrpcError,
    firehose_frames,
    key_package_record,
    xmtp_inbox_record,
)

pytestmark = pytest.mark.devnet

Frame = tuple[dict[str, Any], dict[str, Any]]
FIREHOSE_WAIT_S = 30


def _port_open(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((parts.hostname or "", parts.port or 0)) == 0


async def _collect(url: str, done: Any) -> list[Frame]:
    """Read frames until `done(frames)` is true; fail after FIREHOSE_WAIT_S seconds."""
    frames: list[Frame] = []
    async with asyncio.timeout(FIREHOSE_WAIT_S):
        async for frame in firehose_frames(url):
            frames.append(frame)
            if done(frames):
                return frames
    raise AssertionError("firehose closed early")


def _suffix() -> str:
    # The session network is shared, so handles must be unique; the PDS caps the first
    # label of a service handle at 18 characters.
    return secrets.token_hex(3)


def _is(header: dict[str, Any], body: dict[str, Any], kind: str, did: str) -> bool:
    return bool(header["t"] == kind and body.get("did", body.get("repo")) == did)


def test_start_binds_loopback_on_distinct_ports(devnet: Devnet) -> None:
    print(f"\ndevnet start-up: {devnet.startup_seconds:.2f} s (node timings {devnet.info['timingsMs']})")
    assert devnet.startup_seconds < 30
    plc, pds = urlsplit(devnet.plc_url), urlsplit(devnet.pds_url)
    assert plc.hostname == pds.hostname == "127.0.0.1"
    assert plc.port != pds.port
    assert devnet.firehose_url == f"ws://127.0.0.1:{pds.port}/xrpc/com.atproto.sync.subscribeRepos"
    # Gotcha: DID documents must point at a host name, or PDS-internal resolution breaks.
    assert devnet.info["pdsPublicUrl"] == f"http://localhost:{pds.port}"


async def test_records_and_identity_reach_the_firehose(devnet: Devnet) -> None:
    async with devnet.client() as pds:
        suffix = _suffix()  # the session network is shared: unique handles
        alice = await pds.create_account(f"alice{suffix}.test")
        bob = await pds.create_account(f"bob{suffix}.test")
        assert alice.did.startswith("did:plc:") and alice.did != bob.did

        _, inbox_cid = await pds.put_record(alice, "org.xmtp.inbox", "self", xmtp_inbox_record())
        _, kp_cid = await pds.put_record(bob, "at.didcomm.keyPackage", "self", key_package_record())
        post_uri, post_cid = await pds.create_post(alice, "hello")
        post_rkey = post_uri.rsplit("/", 1)[1]
        await pds.delete_record(alice, "app.bsky.feed.post", post_rkey)

        car = await pds.get_record(alice.did, "org.xmtp.inbox", "self")
        _, blocks = libipld.decode_car(car)
        assert inbox_cid in {libipld.encode_cid(c) for c in blocks}

        alice = await pds.update_handle(alice, f"renamed{suffix}.test")
        assert await pds.resolve_handle(alice.handle) == alice.did

    def renamed(frames: list[Frame]) -> bool:
        return any(_is(h, b, "#identity", alice.did) and b.get("handle") == alice.handle for h, b in frames)

    frames = await _collect(devnet.subscribe_url(cursor=0), renamed)
    ops = [
        (b["repo"], op["action"], op["path"], op["cid"] and libipld.encode_cid(op["cid"]))
        for h, b in frames
        if h["t"] == "#commit" and b["repo"] in (alice.did, bob.did)
        for op in b["ops"]
    ]
    assert ops == [
        (alice.did, "create", "org.xmtp.inbox/self", inbox_cid),
        (bob.did, "create", "at.didcomm.keyPackage/self", kp_cid),
        (alice.did, "create", f"app.bsky.feed.post/{post_rkey}", post_cid),
        (alice.did, "delete", f"app.bsky.feed.post/{post_rkey}", None),
    ]
    seqs = [b["seq"] for _, b in frames]
    assert seqs == sorted(seqs)


async def test_account_status_changes_emit_account_frames(devnet: Devnet) -> None:
    async with devnet.client() as pds:
        carol = await pds.create_account(f"carol{_suffix()}.test")
        await pds.deactivate(carol)
        with pytest.raises(XrpcError) as err:
            await pds.put_record(carol, "org.xmtp.inbox", "self", xmtp_inbox_record())
        assert err.value.error == "AccountDeactivated"
        await pds.activate(carol)
        await pds.takedown(carol.did)
        assert (await pds.get_repo_status(carol.did))["status"] == "takendown"
        await pds.reverse_takedown(carol.did)

    def statuses(frames: list[Frame]) -> list[tuple[bool, str | None]]:
        return [(b["active"], b.get("status")) for h, b in frames if _is(h, b, "#account", carol.did)]

    frames = await _collect(devnet.subscribe_url(cursor=0), lambda fs: len(statuses(fs)) >= 5)
    assert statuses(frames) == [
        (True, None),
        (False, "deactivated"),
        (True, None),
        (False, "takendown"),
        (True, None),
    ]


async def test_admin_delete_leaves_only_the_deleted_frame(devnet: Devnet) -> None:
    async with devnet.client() as pds:
        dave = await pds.create_account(f"dave{_suffix()}.test")
        await pds.put_record(dave, "org.xmtp.inbox", "self", xmtp_inbox_record())
        await pds.delete_account_admin(dave.did)

    def deleted(frames: list[Frame]) -> bool:
        return any(_is(h, b, "#account", dave.did) and b.get("status") == "deleted" for h, b in frames)

    frames = await _collect(devnet.subscribe_url(cursor=0), deleted)
    # The PDS purges a deleted account's earlier events from its outbox: replays have seq gaps.
    mine = [(h["t"], b.get("active"), b.get("status")) for h, b in frames if dave.did in (b.get("did"), b.get("repo"))]
    assert mine == [("#account", False, "deleted")]


async def test_plc_serves_did_document(devnet: Devnet) -> None:
    async with devnet.client() as pds:
        erin = await pds.create_account(f"erin{_suffix()}.test")
        doc = await pds.plc_document(erin.did)
    assert doc["id"] == erin.did
    assert doc["alsoKnownAs"] == [f"at://{erin.handle}"]
    assert {m["id"] for m in doc["verificationMethod"]} >= {"#atproto"}
    pds_port = urlsplit(devnet.pds_url).port
    endpoints = {s["id"]: s["serviceEndpoint"] for s in doc["service"]}
    assert endpoints["#atproto_pds"] == f"http://localhost:{pds_port}"


async def test_xrpc_error_carries_the_error_name(devnet: Devnet) -> None:
    async with PdsClient(devnet.pds_url, devnet.plc_url, "wrong-password") as pds:
        with pytest.raises(XrpcError) as err:
            await pds.takedown("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa")
    assert err.value.status == 401


def test_second_network_runs_alongside_and_stops_cleanly(devnet: Devnet) -> None:
    net = Devnet()
    with net:
        assert net.pds_url != devnet.pds_url
        assert _port_open(net.pds_url) and _port_open(net.plc_url)
        urls = (net.pds_url, net.plc_url)
        log = net.log_path
    assert log is not None and not log.exists()  # work dir removed
    assert not any(_port_open(u) for u in urls)
    assert _port_open(devnet.pds_url)
    with pytest.raises(DevnetError):
        _ = net.pds_url


def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    with pytest.raises(DevnetError, match=r"install\.sh"):
        Devnet(node=tmp_path / "missing-node").start()
    fake = tmp_path / "node"
    fake.write_text("#!/bin/sh\necho boom: cannot start >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(DevnetError, match=r"(?s)code 3.*boom: cannot start"):
        Devnet(node=fake).start()
