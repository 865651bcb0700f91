"""The `atmx` command, run as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from devnet_harness import Devnet
from sample_records import handle, xmtp_record

from atmx.indexer.cli import build_parser, settings_from
from atmx.indexer.version import __version__

pytestmark = pytest.mark.subprocess  # the atmx command, run for real

ATMX = [sys.executable, "-m", "atmx.indexer.cli"]


async def atmx(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *ATMX, *args, env={**os.environ, **(env or {})}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_version_and_help() -> None:
    code, out, _ = await atmx("--version")
    assert code == 0 and out.strip() == f"atmx {__version__}"
    code, out, _ = await atmx("--help")
    assert code == 0 and all(cmd in out for cmd in ("run", "index", "serve", "lookup", "verify"))


async def test_bad_configuration_is_a_clear_error() -> None:
    code, _, err = await atmx("serve", "--listen", "nowhere")
    assert code == 2 and "listen address (ATMX_LISTEN, --listen) must be host:port" in err
    code, _, err = await atmx("run", env={"ATMX_RELAY": "ftp://relay"})
    assert code == 2 and "relay URL" in err


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATMX_RELAY", "wss://from-env.example")
    monkeypatch.setenv("ATMX_LISTEN", "127.0.0.1:1111")
    args = build_parser().parse_args(["run", "--relay", "wss://from-flag.example", "--data-dir", "/tmp/x"])
    s = settings_from(args)
    assert s.relay == "wss://from-flag.example" and s.listen == "127.0.0.1:1111" and s.data_dir == Path("/tmp/x")


async def test_lookup_answers_like_the_api(db_dsn: str, db_pool: asyncpg.Pool) -> None:
    did = "did:plc:" + "b" * 24
    inbox = "cd" * 32
    await db_pool.execute("INSERT INTO accounts (did, handle, handle_verified) VALUES ($1, 'bee.test', true)", did)
    await db_pool.execute(
        """INSERT INTO bindings (did, protocol, collection, rkey, uri, cid, rev, record, status, xmtp_inbox_id,
                                 created_at)
           VALUES ($1, 'xmtp', 'org.xmtp.inbox', 'self', $2, 'bafyx', '3kaaaaaaaaa22', $3, 'pending', $4,
                   '2026-01-01T00:00:00Z')""",
        did,
        f"at://{did}/org.xmtp.inbox/self",
        {"id": inbox, "verificationSignature": "x", "createdAt": "2026-01-01T00:00:00Z"},
        inbox,
    )
    owners = {"bee.test": did}  # what the handles' domains say now

    async def resolve_handle(request: web.Request) -> web.Response:
        owner = owners.get(request.query.get("handle", ""))
        if owner is None:
            return web.json_response({"error": "HandleNotFound", "message": "no such handle"}, status=400)
        return web.json_response({"did": owner})

    app = web.Application()
    app.router.add_get("/xrpc/com.atproto.identity.resolveHandle", resolve_handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    env = {
        "ATMX_DATABASE_URL": db_dsn,
        "ATMX_HANDLE_RESOLVER": f"http://127.0.0.1:{port}",
        "ATMX_ALLOW_INSECURE_HTTP": "1",
    }
    try:
        code, out, _ = await atmx("lookup", "bee.test", env=env)
        assert code == 0 and json.loads(out)["xmtp"]["inboxId"] == inbox
        code, out, _ = await atmx("lookup", inbox, env=env)
        assert code == 0 and [a["did"] for a in json.loads(out)["accounts"]] == [did]
        code, _, err = await atmx("lookup", "nobody.test", env=env)
        assert code == 1 and "IdentityNotFound" in err
        owners["bee.test"] = "did:plc:" + "c" * 24  # the domain changed hands; the index has not heard
        code, _, err = await atmx("lookup", "bee.test", env=env)
        assert code == 1 and "IdentityNotFound" in err
    finally:
        await runner.cleanup()


@pytest.mark.devnet
async def test_run_with_the_embedded_database(devnet: Devnet, tmp_path: Path) -> None:
    """The README's first command: `atmx run` alone gives a database, an indexer and an API."""
    port = free_port()
    env = {
        **os.environ,
        "ATMX_RELAY": devnet.firehose_url,
        "ATMX_PLC_URL": devnet.plc_url,
        "ATMX_HANDLE_RESOLVER": devnet.pds_url,
        "ATMX_ALLOW_INSECURE_HTTP": "1",
        "ATMX_DATA_DIR": str(tmp_path / "data"),
        "ATMX_LISTEN": f"127.0.0.1:{port}",
    }
    env.pop("ATMX_DATABASE_URL", None)
    proc = await asyncio.create_subprocess_exec(
        *ATMX, "run", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}/xrpc"
    try:
        async with aiohttp.ClientSession() as http, devnet.client() as pds:
            deadline = time.monotonic() + 60
            while True:
                try:
                    async with http.get(f"{base}/_health") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert proc.returncode is None, "atmx run exited early"
                assert time.monotonic() < deadline, "atmx run did not serve /xrpc/_health within 60 s"
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.5)  # the firehose connection follows the API by a moment
            acct = await pds.create_account(handle())
            rec = xmtp_record()
            await pds.put_record(acct, "org.xmtp.inbox", "self", rec)
            deadline = time.monotonic() + 10
            while True:
                async with http.get(f"{base}/directory.atmx.getIdentity", params={"actor": acct.did}) as resp:
                    body = await resp.json()
                if resp.status == 200:
                    break
                assert time.monotonic() < deadline, f"record never indexed: {body}"
                await asyncio.sleep(0.1)
            assert body["xmtp"]["inboxId"] == rec["id"]
            assert (tmp_path / "data" / "pg").is_dir()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
