"""A failure the operator has to fix: the command prints one line and exits non-zero."""

from __future__ import annotations


class Fatal(Exception):
    """One line for the operator: what failed, why, and what to do. `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
