"""indexer/logs.py: atmx's lines at the chosen level; libraries' chatter and Python warnings kept out."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import pytest

from atmx.indexer.logs import QUIET_LOGGERS, configure


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    with warnings.catch_warnings():
        yield
    logging.captureWarnings(False)
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


def test_info_keeps_library_chatter_and_warnings_out(capsys: pytest.CaptureFixture[str]) -> None:
    configure("INFO")
    logging.getLogger("atmx.indexer.service").info("indexing")
    logging.getLogger("pgserver").info("running pg_ctl")  # narration an operator cannot act on
    logging.getLogger("pgserver").warning("initdb failed")  # still shown: it matters
    warnings.warn("XDG_RUNTIME_DIR is not set", RuntimeWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert " INFO atmx.indexer.service: indexing" in err
    assert "pg_ctl" not in err and " WARNING pgserver: initdb failed" in err
    assert "XDG_RUNTIME_DIR" not in err


def test_debug_routes_python_warnings_through_logging(capsys: pytest.CaptureFixture[str]) -> None:
    configure("DEBUG")
    logging.getLogger("pgserver").info("running pg_ctl")
    warnings.warn("XDG_RUNTIME_DIR is not set", RuntimeWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert "running pg_ctl" not in err  # quiet loggers stay at WARNING or above even at DEBUG
    assert "XDG_RUNTIME_DIR is not set" in err
