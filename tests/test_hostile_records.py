"""Poison records: validly signed commits whose records are built to break the indexer.

Each must end as one invalid binding (or one rejection) with its reason, while the cursor
moves on and nothing stays pending in memory. The pipeline tier uses forged-but-valid repos
(tests/forge.py); the devnet tier writes the same records through the reference PDS.
"""

from __future__ import annotations

from typing import Any

import pytest
from pipeline_harness import XMTP, Harness, xmtp_record

from atmx.indexer.index import process as process_mod


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


async def settled(harness: Harness) -> None:
    await harness.pipeline.drain()
    assert harness.pipeline.mark.value == harness.seq  # the cursor covers every event fed
    assert len(harness.pipeline.mark) == 0  # and nothing stays pending in memory


async def test_a_deeply_nested_record_is_invalid_and_the_cursor_moves_on(harness: Harness) -> None:
    repo = harness.new_repo()
    await harness.feed(harness.frame(repo.put(XMTP, xmtp_record())))  # warm: state and key in memory
    await harness.feed(harness.frame(repo.put(XMTP, {**xmtp_record(), "x": nested(1500)})))
    other = harness.new_repo()
    await harness.feed(harness.frame(other.put(XMTP, xmtp_record())))
    await settled(harness)
    row = await harness.binding(repo.did, "xmtp")
    assert row is not None and (row["status"], row["reason"]) == ("invalid", "too_deep")
    assert row["rev"] == repo.rev  # the poison replaced the old record: no stale binding is served
    assert await harness.binding(other.did, "xmtp") is not None


async def test_a_huge_array_and_nul_keys_are_stored_invalid(harness: Harness) -> None:
    repo = harness.new_repo()
    await harness.feed(harness.frame(repo.put(XMTP, {**xmtp_record(), "a": list(range(60_000)), "k\x00": 1})))
    await settled(harness)
    row = await harness.binding(repo.did, "xmtp")
    assert row is not None and (row["status"], row["reason"]) == ("invalid", "nul_character")


async def test_any_unexpected_error_is_a_rejection_a_refetch_and_a_done_seq(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = harness.new_repo()
    await harness.feed(harness.frame(repo.put(XMTP, xmtp_record())))

    def broken(*_args: object, **_kwargs: object) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(process_mod, "decide_commit", broken)
    await harness.feed(harness.frame(repo.put(XMTP, xmtp_record())), repair=False)
    await settled(harness)
    assert "internal_error" in await harness.rejections(repo.did)
    detail = await harness.pool.fetchval("SELECT detail FROM rejections WHERE reason = 'internal_error'")
    assert "KeyError" in detail
    assert await harness.pool.fetchval("SELECT reason FROM resync_queue WHERE did = $1", repo.did) == "internal_error"
