"""ast.parse for the tests that read source, with the garbage collector held off meanwhile.

CPython 3.11 before 3.11.8 raises `SystemError: AST constructor recursion depth mismatch`
when a finalizer runs inside ast.parse (an unclosed aiohttp session collected there did,
in a full run). Parsing with the collector paused cannot meet it.
"""

from __future__ import annotations

import ast
import gc


def parse_source(source: str, filename: str = "<unknown>") -> ast.Module:
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(source, filename)
    finally:
        if enabled:
            gc.enable()
