"""commands/services.py: `atmx run`, `index` and `serve` stop with one line when they cannot start."""

from __future__ import annotations

import socket

import pytest
from atmx_command import atmx, one_line

pytestmark = pytest.mark.subprocess  # the real command, as a child process


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
