"""Shared pytest fixtures, and the markers that split the suite into tiers.

`db` marks every test that needs PostgreSQL (it uses one of DB_FIXTURES, directly or through
another fixture); `subprocess` (set by the modules themselves) marks tests that start child
processes. The unit tier is what carries none of devnet, slow, db and subprocess: it runs in
`bash scripts/test --fast`, each test within UNIT_TIMEOUT seconds.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from devnet_harness import INSTALL_HINT, NODE, Devnet, PdsClient

DB_FIXTURES = frozenset({"db_pool", "db_dsn", "pg_server_dsn"})
NOT_UNIT = ("devnet", "slow", "db", "subprocess")
UNIT_TIMEOUT = 10.0  # seconds; the other tiers keep pyproject's timeout


def _is_unit(item: pytest.Item) -> bool:
    return not any(item.get_closest_marker(name) for name in NOT_UNIT)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if DB_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.db)
        if _is_unit(item) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    """Collect garbage before a failure is formatted. Formatting parses source with ast.parse, and
    on CPython 3.11 a finalizer run by the garbage collector inside it (aiohttp's warning about a
    session a failed test left open) raises SystemError("AST constructor recursion depth
    mismatch"), which ends the whole session instead of reporting the one failure."""
    if call.excinfo is not None:
        gc.collect()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Keep the unit tier honest: a unit test that starts a process fails, naming the marker."""
    if not _is_unit(item):
        return (yield)
    started: list[str] = []
    popen_init = subprocess.Popen.__init__

    def watched(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        started.append(str(args)[:200])
        popen_init(self, args, *rest, **kwargs)

    subprocess.Popen.__init__ = watched  # type: ignore[method-assign]
    try:
        result = yield
    finally:
        subprocess.Popen.__init__ = popen_init  # type: ignore[method-assign]
    if started:
        pytest.fail(f"this test starts processes ({started[0]}): mark it @pytest.mark.subprocess", pytrace=False)
    return result


# --- devnet fixtures ---


@pytest.fixture(scope="session")
def devnet() -> Iterator[Devnet]:
    """A fresh loopback PLC + PDS for the whole session (tests must not hard-code DIDs).

    A missing install fails rather than skips: a skipped end-to-end tier must not pass
    for a green run. Set ATMX_SKIP_DEVNET=1 to skip it on purpose.
    """
    if os.environ.get("ATMX_SKIP_DEVNET") == "1":
        pytest.skip("ATMX_SKIP_DEVNET=1")
    if not NODE.exists():
        pytest.fail(f"devnet not installed ({NODE} missing): {INSTALL_HINT}", pytrace=False)
    with Devnet() as net:
        yield net


@pytest.fixture
async def own_devnet() -> AsyncIterator[Devnet]:
    """A PLC + PDS of one test alone (about 2 s to start): for a test whose premise is the whole
    network (a quiet one, or every repo a PDS lists), which the session's shared PDS cannot give."""
    if os.environ.get("ATMX_SKIP_DEVNET") == "1":
        pytest.skip("ATMX_SKIP_DEVNET=1")
    if not NODE.exists():
        pytest.fail(f"devnet not installed ({NODE} missing): {INSTALL_HINT}", pytrace=False)
    net = await asyncio.to_thread(Devnet().__enter__)
    try:
        yield net
    finally:
        await asyncio.to_thread(net.__exit__, None, None, None)


@pytest.fixture
async def pds(devnet: Devnet) -> AsyncIterator[PdsClient]:
    """A client of the devnet's PDS."""
    async with devnet.client() as client:
        yield client


# --- database fixtures (lead) ---
