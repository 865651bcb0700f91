"""commands/verify.py: what `atmx verify` reads, and one line when it cannot."""

from __future__ import annotations

from pathlib import Path

import pytest
from atmx_command import atmx, closed_port, one_line

from atmx.indexer.commands.verify import source_url
from atmx.indexer.fatal import Fatal


@pytest.mark.subprocess  # the real command, as a child process
@pytest.mark.parametrize("form", ["ws://127.0.0.1:{port}", "http://127.0.0.1:{port}", "127.0.0.1:{port}"])
async def test_verify_an_unreachable_stream(form: str) -> None:
    port = closed_port()
    code, _, err = await atmx("verify", form.format(port=port))
    assert code == 1
    line = one_line(err)
    assert f"127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos: connection refused" in line


@pytest.mark.subprocess  # the real command, as a child process
async def test_verify_a_missing_folder(tmp_path: Path) -> None:
    code, _, err = await atmx("verify", str(tmp_path / "frames") + "/")
    assert code == 2 and "is not a directory of .bin frames" in one_line(err)


def test_a_source_is_a_relay_or_a_folder(tmp_path: Path) -> None:
    assert source_url(str(tmp_path)) is None  # an existing folder of frames
    assert source_url("relay.example.com") == "wss://relay.example.com/xrpc/com.atproto.sync.subscribeRepos"
    assert source_url("ws://127.0.0.1:2583") == "ws://127.0.0.1:2583/xrpc/com.atproto.sync.subscribeRepos"
    with pytest.raises(Fatal) as refused:
        source_url("./frames-that-are-not-there")
    assert refused.value.code == 2 and "is not a directory of .bin frames" in str(refused.value)
