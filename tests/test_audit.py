"""`atmx verify` over the real devnet frames, through the real CLI and a loopback PLC."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import coincurve
import libipld
import pytest
from aiohttp import web
from cbrrr import decode_dag_cbor, encode_dag_cbor
from forge import SigningKey, rewrite_commit

from atmx.indexer.firehose.audit import Auditor, frames_from_dir
from atmx.indexer.identity.resolver import IdentityResolver
from atmx.indexer.repo.car import read_car
from atmx.indexer.repo.crypto import format_did_key

FRAMES = Path(__file__).parent / "fixtures" / "devnet-frames"
DOCS: dict[str, Any] = json.loads((FRAMES / "did-docs.json").read_text())
BATCH = FRAMES / "43-batch200-seq0045-commit.bin"


def recovered_doc(frame: bytes) -> dict[str, Any]:
    """A DID document for the account of frame 43, whose document was not captured.

    The key is recovered from the commit signature (ECDSA public-key recovery), so this
    checks everything about that commit except that the key really is the account's.
    """
    _, body = libipld.decode_dag_cbor_multi(frame)
    car = read_car(body["blocks"])
    commit = decode_dag_cbor(car.blocks[car.roots[0]])
    assert isinstance(commit, dict)
    sig = commit.pop("sig")
    pub = coincurve.PublicKey.from_signature_and_message(sig + b"\x00", encode_dag_cbor(commit))
    did = body["repo"]
    return {
        "id": did,
        "alsoKnownAs": [],
        "verificationMethod": [
            {
                "id": f"{did}#atproto",
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": format_did_key("k256", pub.format()).removeprefix("did:key:"),
            }
        ],
    }


@pytest.fixture
async def plc() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    docs = dict(DOCS)
    extra = recovered_doc(BATCH.read_bytes())
    docs[extra["id"]] = extra

    async def get(request: web.Request) -> web.Response:
        doc = docs.get(request.match_info["did"])
        return web.json_response(doc) if doc else web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{did}", get)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}", docs
    await runner.cleanup()


async def run_cli(*args: str, plc_url: str) -> tuple[int, str]:
    env = {**os.environ, "ATMX_PLC_URL": plc_url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "atmx.indexer.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


@pytest.mark.subprocess
async def test_every_devnet_commit_verifies(plc: tuple[str, dict[str, Any]]) -> None:
    code, out = await run_cli("verify", str(FRAMES), "--json", plc_url=plc[0])
    report = json.loads(out.strip().splitlines()[-1])
    commits = len([p for p in FRAMES.glob("*.bin") if p.name.endswith("-commit.bin")])
    assert report["commits"] == commits == 21
    assert report["verified"] == commits
    assert report["failed"] == {}
    assert report["syncs"] == report["syncsVerified"] == 5
    assert code == 0


@pytest.mark.subprocess
async def test_forged_frames_are_counted_by_reason(plc: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    # a real frame re-signed by a stranger, and one whose DID has no document
    shutil.copy(FRAMES / "17-live-seq0017-commit.bin", tmp_path / "01.bin")
    header, body = libipld.decode_dag_cbor_multi((FRAMES / "17-live-seq0017-commit.bin").read_bytes())
    body["repo"] = "did:plc:zzzzzzzzzzzzzzzzzzzzzzzz"
    (tmp_path / "02.bin").write_bytes(libipld.encode_dag_cbor(header) + libipld.encode_dag_cbor(body))
    (tmp_path / "03.bin").write_bytes(b"\x00garbage")
    code, out = await run_cli("verify", str(tmp_path), "--json", plc_url=plc[0])
    report = json.loads(out.strip().splitlines()[-1])
    assert report["commits"] == 2 and report["verified"] == 1
    assert report["failed"] == {"identity:not_found": 1, "frame:bad_cbor": 1}
    assert code == 1


async def test_wrong_key_is_refused_after_one_refresh(plc: tuple[str, dict[str, Any]]) -> None:
    from forge import RepoBuilder

    did = "did:plc:" + "a" * 24
    real, stranger = SigningKey.generate(), SigningKey.generate()
    plc[1][did] = {
        "id": did,
        "verificationMethod": [
            {"id": "#atproto", "type": "Multikey", "publicKeyMultibase": real.did_key.removeprefix("did:key:")}
        ],
    }
    msg = rewrite_commit(RepoBuilder(did, real).put("org.xmtp.inbox/self", {"id": "x"}), key=stranger)
    async with aiohttp.ClientSession() as session:
        auditor = Auditor(IdentityResolver(plc[0], session=session, refresh_min_interval=0))
        await auditor.check(msg.to_frame(1))
    assert auditor.report.commits == 1 and auditor.report.verified == 0
    assert dict(auditor.report.failed) == {"bad_signature": 1}


def test_frames_from_dir_reads_in_name_order() -> None:
    names = [f[:40] for f in frames_from_dir(FRAMES)]
    assert len(names) == len(list(FRAMES.glob("*.bin")))
    assert names[0] == (FRAMES / "01-live-seq0001-identity.bin").read_bytes()[:40]
