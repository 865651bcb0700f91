"""Every operator mistake and unreachable dependency ends `atmx` with one clear line, never a traceback.

Each case runs the real command as a subprocess (real PostgreSQL where one is needed) and checks
the exit status, that stderr holds at most two lines (a "waiting for …" line may precede the
error) and no traceback, and what the line says. Waits are bounded by ATMX_DATABASE_WAIT.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from seed import INBOX_A, seed_account, seed_didcomm, seed_xmtp

ATMX = [sys.executable, "-m", "atmx.indexer.cli"]
TIMEOUT = 60.0


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATMX_")}
    return {**env, **extra}


async def atmx(*args: str, **env: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *ATMX, *args, env=clean_env(**env), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def one_line(err: str, *, lines: int = 1) -> str:
    """The last stderr line, after checking there are at most `lines` and no traceback."""
    got = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert 1 <= len(got) <= lines, err
    return got[-1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: connecting is refused at once


# --- start-up ------------------------------------------------------------------------------


async def test_a_port_in_use(db_dsn: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = await atmx("serve", ATMX_DATABASE_URL=db_dsn, ATMX_LISTEN=f"127.0.0.1:{port}")
    assert code == 1
    line = one_line(err)
    assert f"atmx serve: cannot listen on 127.0.0.1:{port}: address already in use" in line
    assert "ATMX_LISTEN" in line


@pytest.mark.parametrize("command", [["serve"], ["status"], ["lookup", "alice.test"], ["recheck", "alice.test"]])
async def test_a_database_that_does_not_answer(command: list[str]) -> None:
    port = closed_port()
    code, _, err = await atmx(
        *command, ATMX_DATABASE_URL=f"postgresql://atmx@127.0.0.1:{port}/atmx", ATMX_DATABASE_WAIT="1s"
    )
    assert code == 1
    waiting, failed = err.strip().splitlines()  # exactly: one line while waiting, one when giving up
    assert f"waiting for PostgreSQL at 127.0.0.1:{port} (connection refused)" in waiting
    assert f"atmx {command[0]}: PostgreSQL at 127.0.0.1:{port} did not answer within 1s" in failed
    assert "ATMX_DATABASE_URL" in failed and "Traceback" not in err


async def test_a_database_that_refuses_the_database_name(db_dsn: str) -> None:
    base, _, query = db_dsn.partition("?")
    missing = f"{base.rpartition('/')[0]}/no_such_db" + (f"?{query}" if query else "")
    code, _, err = await atmx("status", ATMX_DATABASE_URL=missing, ATMX_DATABASE_WAIT="30s")
    assert code == 1
    assert "refused the connection" in one_line(err) and "no_such_db" in err


async def test_a_database_url_that_is_not_one() -> None:
    code, _, err = await atmx("status", ATMX_DATABASE_URL="nonsense")
    assert code == 2
    assert one_line(err) == (
        "atmx: ATMX_DATABASE_URL must be a PostgreSQL URL like postgresql://user:password@host:5432/db, got 'nonsense'"
    )


async def test_a_data_dir_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = await atmx("status", ATMX_DATA_DIR=str(blocker / "data"))
    assert code == 1
    line = one_line(err)
    assert line.startswith(f"atmx status: cannot create the embedded database in {blocker / 'data' / 'pg'}")
    assert "ATMX_DATA_DIR" in line


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("ATMX_LOG_LEVEL", "LOUD", "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("ATMX_MAX_IN_FLIGHT", "-1", "must be a whole number of at least 1"),
        ("ATMX_ALLOW_INSECURE_HTTP", "maybe", "must be 1/true/yes/on or 0/false/no/off"),
        ("ATMX_PLC_URL", "nonsense", "must be an http:// or https:// URL"),
        ("ATMX_STALL_TIMEOUT", "0", "must be a positive number"),
        ("ATMX_DATABASE_WAIT", "soon", "duration must look like 30s"),
        ("ATMX_DISCOVERY_HOST", "ftp://x", "must be an http:// or https:// URL"),
    ],
)
async def test_a_bad_setting_stops_the_start(name: str, value: str, says: str) -> None:
    code, _, err = await atmx("run", **{name: value})
    assert code == 2
    line = one_line(err)
    assert line.startswith(f"atmx: {name}") and says in line and repr(value) in line


async def test_each_command_lists_only_the_flags_it_uses() -> None:
    expected = {
        "run": {"--relay", "--listen", "--discovery-host", "--backfill"},
        "index": {"--relay", "--discovery-host", "--backfill"},
        "serve": {"--listen", "--database-url"},
        "lookup": {"--database-url", "--data-dir"},
        "status": {"--database-url", "--json"},
        "recheck": {"--database-url"},
        "verify": {"--plc-url", "--json"},
        "backfill": {"--discovery-host", "--pds", "--all-repos"},
    }
    absent = {
        "index": {"--listen"},
        "serve": {"--relay", "--backfill", "--discovery-host"},
        "lookup": {"--relay", "--listen", "--plc-url", "--handle-resolver"},
        "status": {"--relay", "--listen"},
        "recheck": {"--relay", "--listen"},
        "verify": {"--relay", "--listen", "--database-url"},
        "backfill": {"--relay", "--listen"},
    }
    for command, flags in expected.items():
        code, out, _ = await atmx(command, "--help")
        assert code == 0
        shown = {word.strip(",[]") for word in out.split() if word.startswith("--")}
        assert flags <= shown, (command, shown)
        assert not (absent.get(command, set()) & shown), (command, shown)


# --- quiet output ------------------------------------------------------------------------------


async def test_embedded_database_says_one_line(tmp_path: Path) -> None:
    """The first command creates the embedded database (initdb) and later ones start it: one INFO line
    each, no pgserver narration, no Python warnings; a fresh index prints no `None`."""
    data = str(tmp_path / "data")
    for first in (True, False):
        code, out, err = await atmx("status", ATMX_DATA_DIR=data)
        assert code == 0, err
        line = one_line(err)
        assert line.endswith(
            f"INFO atmx.indexer.store.database: embedded PostgreSQL {'created in' if first else 'running in'} {data}/pg"
        )
    assert "None" not in out and "seq" not in out
    assert (
        out.splitlines()[0]
        == "firehose disconnected, no cursor yet (no firehose event processed), lag -, no event received yet"
    )


# --- recheck ------------------------------------------------------------------------------------


async def test_recheck_says_which_case_it_is(db_dsn: str, db_pool: asyncpg.Pool) -> None:
    await seed_account(db_pool, "did:plc:alice", handle="alice.test")
    await seed_xmtp(db_pool, "did:plc:alice", inbox=INBOX_A)
    await seed_account(db_pool, "did:plc:dee", handle="dee.test")
    await seed_didcomm(db_pool, "did:plc:dee")
    db = {"ATMX_DATABASE_URL": db_dsn}

    code, out, _ = await atmx("recheck", "alice.test", **db)
    assert code == 0 and out.startswith("1 XMTP binding(s) of alice.test (did:plc:alice) due for a check now")
    code, out, _ = await atmx("recheck", INBOX_A, **db)
    assert code == 0 and out.startswith(f"1 XMTP binding(s) of inbox {INBOX_A} due")
    code, _, err = await atmx("recheck", "nobody.test", **db)
    assert code == 1 and one_line(err) == "no account with the verified handle nobody.test in the index"
    code, _, err = await atmx("recheck", "did:plc:nobody", **db)
    assert code == 1 and one_line(err) == "did:plc:nobody is not in the index"
    code, _, err = await atmx("recheck", "dee.test", **db)
    assert code == 1 and one_line(err) == "did:plc:dee has no XMTP binding"
    code, _, err = await atmx("recheck", "not a subject", **db)
    assert code == 2 and "is not a handle, a DID or a 64-hex XMTP inbox ID" in one_line(err)


# --- verify --------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["ws://127.0.0.1:{port}", "http://127.0.0.1:{port}", "127.0.0.1:{port}"])
async def test_verify_an_unreachable_stream(form: str) -> None:
    port = closed_port()
    code, _, err = await atmx("verify", form.format(port=port))
    assert code == 1
    line = one_line(err)
    assert f"127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos: connection refused" in line


async def test_verify_a_missing_folder(tmp_path: Path) -> None:
    code, _, err = await atmx("verify", str(tmp_path / "frames") + "/")
    assert code == 2 and "is not a directory of .bin frames" in one_line(err)


# --- backfill -------------------------------------------------------------------------------------


async def test_backfill_arguments_are_checked_first(tmp_path: Path) -> None:
    db = {"ATMX_DATABASE_URL": f"postgresql://x@127.0.0.1:{closed_port()}/x"}  # never reached
    code, _, err = await atmx("backfill", "--did", "notadid", **db)
    assert code == 2 and one_line(err) == "atmx backfill: --did 'notadid' is not a DID (did:plc:… or did:web:…)"
    code, _, err = await atmx("backfill", "--dids-file", str(tmp_path / "missing.txt"), **db)
    assert code == 2 and "cannot read --dids-file" in one_line(err) and "No such file or directory" in err
    code, _, err = await atmx("backfill", "--pds", "http://127.0.0.1:1", **db)
    assert code == 2
    assert "is not https; ATMX_ALLOW_INSECURE_HTTP=1 allows http:// on loopback test networks" in one_line(err)


async def test_backfill_of_a_dead_host_is_one_line(db_dsn: str) -> None:
    port = closed_port()
    code, out, err = await atmx("backfill", "--pds", f"https://127.0.0.1:{port}", ATMX_DATABASE_URL=db_dsn)
    assert code == 1 and out == ""
    line = one_line(err)
    assert line.startswith(
        f"atmx backfill: cannot list repos: https://127.0.0.1:{port}/xrpc/com.atproto.sync.listRepos"
    )
    assert "connection refused after 5 attempts" in line
    assert "[" not in err  # no progress bar: this run did nothing


async def test_backfill_whose_repos_all_fail_says_why_and_exits_1(db_dsn: str, tmp_path: Path) -> None:
    dids = tmp_path / "dids.txt"
    dids.write_text("".join(f"did:plc:{c * 24}\n" for c in "abcde"))
    code, out, err = await atmx(
        "backfill",
        "--dids-file",
        str(dids),
        "--no-progress",
        ATMX_DATABASE_URL=db_dsn,
        ATMX_PLC_URL=f"http://127.0.0.1:{closed_port()}",
    )
    assert code == 1 and "Traceback" not in err
    assert "0 ok, 5 failed (identity_unreachable 5); run again to retry the failed repos" in out
    warnings = [line for line in err.splitlines() if " WARNING " in line]
    assert len(warnings) == 5 and all("failed: identity_unreachable" in line for line in warnings)


@pytest.fixture
async def relay_without_collection_directory() -> AsyncIterator[str]:
    async def unsupported(_request: web.Request) -> web.Response:
        return web.json_response({"error": "MethodNotImplemented", "message": "no"}, status=501)

    app = web.Application()
    app.router.add_get("/xrpc/com.atproto.sync.listReposByCollection", unsupported)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def test_backfill_refuses_to_list_the_whole_network_without_the_flag(
    db_dsn: str, relay_without_collection_directory: str
) -> None:
    code, _, err = await atmx(
        "backfill",
        ATMX_DATABASE_URL=db_dsn,
        ATMX_DISCOVERY_HOST=relay_without_collection_directory,
        ATMX_ALLOW_INSECURE_HTTP="1",
    )
    assert code == 2
    line = one_line(err)
    assert line.startswith(f"atmx backfill: {relay_without_collection_directory} answers")
    assert "about 40,000 requests (3.7 h at 3/s)" in line and "--all-repos" in line and "ATMX_DISCOVERY_HOST" in line
