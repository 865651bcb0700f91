"""indexer/records/family.py: what a family declares, as each family module fills it in."""

from __future__ import annotations

import dataclasses

import pytest

from atmx.indexer.records.family import AccountContext, Checked, Family
from atmx.indexer.records.registry import FAMILIES


def test_checked_defaults() -> None:
    assert Checked("valid") == Checked("valid", None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Checked("valid").status = "verified"  # type: ignore[misc]


def test_account_context_defaults_to_no_mls_endpoint() -> None:
    assert AccountContext().mls_endpoint is None


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.nsid)
def test_each_family_fills_in_a_coherent_declaration(family: Family) -> None:
    assert family.protocol in ("xmtp", "didcomm", "germ", "catbird")
    assert callable(family.validate) and callable(family.project)
    # a protocol made of many records says how to show them together
    assert (family.compose is not None) == (family.protocol == "catbird")
    if family.single:
        assert not family.legacy
