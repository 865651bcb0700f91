"""indexer/fatal.py: a failure the operator fixes becomes one stderr line and its exit status."""

from __future__ import annotations

from pathlib import Path

import pytest

from atmx.indexer.cli import main
from atmx.indexer.fatal import Fatal


def test_a_fatal_carries_its_line_and_exit_status() -> None:
    assert (str(Fatal("cannot listen")), Fatal("cannot listen").code) == ("cannot listen", 1)
    assert Fatal("bad argument", code=2).code == 2


def test_the_command_prints_it_as_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = f"{tmp_path}/frames/"
    assert main(["verify", missing]) == 2  # commands/verify.py raises Fatal(..., code=2)
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"atmx verify: {missing} is not a directory of .bin frames (nor a relay host or URL)\n"
