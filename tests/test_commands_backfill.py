"""commands/backfill.py: arguments checked before anything runs, one line for a dead host, a summary by reason."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from atmx_command import atmx, closed_port, one_line

pytestmark = pytest.mark.subprocess  # the real command, as a child process


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
