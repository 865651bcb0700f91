"""indexer/version.py: the version atmx reports is the one it is installed as."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

from atmx.indexer.version import __version__

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_version_matches_pyproject_and_the_installed_package() -> None:
    declared = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["version"]
    assert __version__ == declared == version("atmx")
