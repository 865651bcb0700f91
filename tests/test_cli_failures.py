"""Every operator mistake and unreachable dependency ends `atmx` with one clear line, never a traceback.

Each case runs the real command as a subprocess (real PostgreSQL where one is needed) and checks
the exit status, that stderr holds at most two lines (a "waiting for …" line may precede the
error) and no traceback, and what the line says. Waits are bounded by ATMX_DATABASE_WAIT.
The failures particular to one command are in its own module (test_commands_*.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from atmx_command import atmx, closed_port, one_line

pytestmark = pytest.mark.subprocess  # the real command, as a child process


# --- start-up ------------------------------------------------------------------------------


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
