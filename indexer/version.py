"""atmx's version: `atmx --version`, the firehose User-Agent and the API's health answer.
tests/test_version.py keeps it equal to pyproject.toml's."""

__version__ = "0.1.0"
