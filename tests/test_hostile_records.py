"""Poison records: validly signed commits whose records are built to break the indexer.

Each must end as one invalid binding (or one rejection) with its reason, while the cursor
moves on and nothing stays pending in memory. The pipeline tier uses forged-but-valid repos
(tests/forge.py); the devnet tier writes the same records through the reference PDS.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from cbrrr import encode_dag_cbor
from devnet_harness import Devnet
from live_directory import Directory
from pipeline_harness import DIDCOMM, XMTP, Harness, xmtp_record
from sample_records import keypackage_record

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


SELECT_XMTP = "SELECT status, reason FROM bindings WHERE did = $1 AND protocol = 'xmtp'"


def invalid_utf8_record() -> bytes:
    """A map whose text value is not UTF-8: CBOR's text type forbids it, a hostile PDS can still send it."""
    good = encode_dag_cbor({**xmtp_record(), "note": "xx"})
    poisoned = good.replace(b"\x64note\x62xx", b"\x64note\x62\xff\xfe")
    assert poisoned != good
    return poisoned


async def test_a_record_that_is_not_utf_8_is_invalid(harness: Harness) -> None:
    repo = harness.new_repo()
    await harness.feed(harness.frame(repo.put(DIDCOMM, keypackage_record())))
    await harness.feed(harness.frame(repo.put(XMTP, invalid_utf8_record())))
    await settled(harness)
    row = await harness.binding(repo.did, "xmtp")
    assert row is not None and (row["status"], row["reason"]) == ("invalid", "bad_record")


@pytest.mark.devnet
async def test_poison_records_written_through_the_reference_pds(directory: Directory, devnet: Devnet) -> None:
    """What the reference PDS accepts from a client (validate: false) reaches atmx as a validly signed
    commit: each poison ends as one invalid binding with its reason, the stream goes on."""
    poisons = {
        "deep": ({**xmtp_record(), "x": nested(500)}, "too_deep"),  # as deep as the client's JSON encoder goes
        "huge": ({**xmtp_record(), "a": list(range(50_000))}, "ok"),
        "nul": ({**xmtp_record(), "note": "a\u0000b"}, "nul_character"),
    }
    async with devnet.client() as pds:
        accounts = {}
        for name, (record, _) in poisons.items():
            account = accounts[name] = await pds.create_account(f"p{name}{secrets.token_hex(3)}.test")
            # first a plain record, so the poison arrives as a live commit of an indexed repo
            _, cid = await pds.put_record(account, "at.didcomm.keyPackage", "self", keypackage_record(), validate=False)
            await directory.until(f"{name}: indexed", lambda a=account, c=cid: directory.shows(a.did, "didcomm", c))
            await pds.put_record(account, "org.xmtp.inbox", "self", record, validate=False)
        for name, (_, reason) in poisons.items():
            did = accounts[name].did

            async def judged(did: str = did) -> bool:
                return bool(await directory.pool.fetchval(SELECT_XMTP, did) is not None)

            await directory.until(f"{name}: the record judged", judged)
            row = await directory.pool.fetchrow(SELECT_XMTP, did)
            assert (row["reason"] or "ok") == reason, name
        later = await pds.create_account(f"after{secrets.token_hex(3)}.test")
        _, cid = await pds.put_record(later, "org.xmtp.inbox", "self", xmtp_record())
        await directory.until("the stream went on", lambda: directory.shows(later.did, "xmtp", cid))
    assert await directory.pool.fetchval("SELECT seq FROM cursors") is not None
    internal = await directory.pool.fetchval("SELECT count(*) FROM rejections WHERE reason = 'internal_error'")
    assert internal == 0
