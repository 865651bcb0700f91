"""Running the real `atmx` command as a subprocess, and checking that a failure says one line."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

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
