"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
from devnet_harness import INSTALL_HINT, NODE, Devnet, PdsClient

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
async def pds(devnet: Devnet) -> AsyncIterator[PdsClient]:
    """A client of the devnet's PDS."""
    async with devnet.client() as client:
        yield client


# --- database fixtures (lead) ---
