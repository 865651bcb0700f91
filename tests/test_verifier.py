"""The XMTP stage on a real PostgreSQL, a loopback XMTP node and real keys (tests/xmtp_keys.py)."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from prometheus_client import REGISTRY
from xmtp_keys import EthKey, InstallationKey, add_installation, create_inbox, inbox_id, revoke
from xmtp_node import XmtpNode
from xmtp_stage import Inbox, Stage, did, make_stage, new_inbox, scw_inbox

from atmx.indexer.xmtp.ed25519ph import PUBLIC_SIGNATURE_CONTEXT
from atmx.indexer.xmtp.verifier import retry_delay


@pytest.fixture
def node() -> Iterator[XmtpNode]:
    with XmtpNode() as n:
        yield n


@pytest.fixture
def second_node() -> Iterator[XmtpNode]:
    with XmtpNode() as n:
        yield n


@pytest.fixture
async def stage(db_pool: asyncpg.Pool, node: XmtpNode) -> AsyncIterator[Stage]:
    async for s in make_stage(db_pool, {"production": node.url}):
        yield s


async def test_pending_becomes_verified_with_env_and_installation(stage: Stage, node: XmtpNode) -> None:
    inbox, subject = new_inbox(node), did()
    await stage.bind(subject, inbox.id, inbox.sign(subject))
    assert (await stage.row(subject))["status"] == "pending"
    await stage.settle()
    row = await stage.row(subject)
    assert (row["status"], row["reason"], row["xmtp_env"]) == ("verified", None, "production")
    assert row["xmtp_installation"] == inbox.installation.public.hex()
    assert row["verified_at"] is not None and row["xmtp_next_check"] > stage.clock.last


async def test_revocation_turns_the_binding_invalid_at_the_next_recheck(stage: Stage, node: XmtpNode) -> None:
    inbox, subject = new_inbox(node), did()
    await stage.bind(subject, inbox.id, inbox.sign(subject))
    await stage.settle()
    assert (await stage.row(subject))["status"] == "verified"
    node.publish(revoke(inbox.id, inbox.wallet, inbox.installation))
    await stage.pool.execute("UPDATE bindings SET xmtp_next_check = now() - interval '1 second'")  # the hour passed
    stage.clock.offset += timedelta(hours=1)
    await stage.settle()
    row = await stage.row(subject)
    assert (row["status"], row["reason"]) == ("invalid", "no_matching_installation")
    assert row["verified_at"] is None


async def test_each_binding_of_one_inbox_stands_on_its_own(stage: Stage, node: XmtpNode) -> None:
    inbox = new_inbox(node)
    second = InstallationKey.generate()
    node.publish(add_installation(inbox.id, inbox.wallet, second))
    a, b, c = did(), did(), did()
    await stage.bind(a, inbox.id, inbox.sign(a))
    await stage.bind(b, inbox.id, inbox.sign(b, second))
    await stage.bind(c, inbox.id, inbox.sign(a))  # a's valid signature copied into c's record
    await stage.settle()
    assert (await stage.row(a))["status"] == "verified"
    assert (await stage.row(b))["xmtp_installation"] == second.public.hex()
    assert ((await stage.row(c))["status"], (await stage.row(c))["reason"]) == ("invalid", "no_matching_installation")
    # revoking the second installation affects only the binding it signed
    node.publish(revoke(inbox.id, inbox.wallet, second))
    await stage.pool.execute("UPDATE bindings SET xmtp_next_check = now() - interval '1 second'")
    await stage.settle()
    assert (await stage.row(a))["status"] == "verified"
    assert (await stage.row(b))["status"] == "invalid"


@pytest.mark.parametrize(
    "forgery",
    ["stranger_installation", "wrong_context", "truncated", "wrong_inbox_id", "forged_update"],
)
async def test_forgeries_are_never_verified(stage: Stage, node: XmtpNode, forgery: str) -> None:
    subject = did()
    inbox = new_inbox(node)
    signature = inbox.sign(subject)
    target = inbox.id
    expected = "no_matching_installation"
    if forgery == "stranger_installation":
        signature = inbox.sign(subject, InstallationKey.generate())
    elif forgery == "wrong_context":
        raw = inbox.installation.sign_ph(subject, b"IDENTITY UPDATE SIGNATURE")
        signature = base64.b64encode(raw).decode()
    elif forgery == "truncated":
        # cut to 63 bytes and padded with a byte that is not the one cut: S < 2^253, so its top
        # byte is zero about one time in sixteen and a zero pad would restore the genuine signature
        raw = base64.b64decode(signature)
        signature = base64.b64encode(raw[:63] + bytes([raw[63] ^ 0x80])).decode()
    elif forgery == "wrong_inbox_id":
        # a log whose creating identifier and nonce do not hash to the inbox it claims
        wallet, installation = EthKey.generate(), InstallationKey.generate()
        target = secrets.token_hex(32)
        node.publish(create_inbox(wallet, 0, installation, claimed_inbox_id=target))
        signature = base64.b64encode(installation.sign_ph(subject, PUBLIC_SIGNATURE_CONTEXT)).decode()
        expected = "inbox_log_invalid:wrong_inbox_id"
    elif forgery == "forged_update":
        # an installation added by an update whose wallet signature is someone else's
        stranger = InstallationKey.generate()
        update = add_installation(inbox.id, EthKey.generate(), stranger)
        node.publish(update)
        signature = inbox.sign(subject, stranger)
        expected = "inbox_log_invalid:not_a_member"
    await stage.bind(subject, target, signature)
    await stage.settle()
    row = await stage.row(subject)
    assert row["status"] == "invalid"
    assert row["reason"] == expected


async def test_unknown_inbox_is_invalid(stage: Stage) -> None:
    subject = did()
    await stage.bind(subject, secrets.token_hex(32), base64.b64encode(bytes(64)).decode())
    await stage.settle()
    row = await stage.row(subject)
    assert (row["status"], row["reason"], row["xmtp_env"]) == ("invalid", "inbox_not_found", "production")


async def test_unreachable_network_is_unverifiable_and_retried(stage: Stage, node: XmtpNode) -> None:
    inbox, subject = new_inbox(node), did()
    await stage.bind(subject, inbox.id, inbox.sign(subject))
    node.status = grpc.StatusCode.UNAVAILABLE
    await stage.settle()
    row = await stage.row(subject)
    assert (row["status"], row["reason"], row["xmtp_attempts"]) == ("unverifiable", "xmtp_unreachable", 1)
    assert row["xmtp_env"] == "production"  # which environment could not be asked
    assert row["xmtp_next_check"] == row["xmtp_checked_at"] + retry_delay(1)
    node.status = None
    await stage.pool.execute("UPDATE bindings SET xmtp_next_check = now() - interval '1 second'")
    await stage.settle()
    assert (await stage.row(subject))["status"] == "verified"


async def test_environments_are_tried_in_order(db_pool: asyncpg.Pool, node: XmtpNode, second_node: XmtpNode) -> None:
    inbox, subject = new_inbox(second_node), did()  # the inbox lives in "dev" only
    async for stage in make_stage(db_pool, {"production": node.url, "dev": second_node.url}):
        await stage.bind(subject, inbox.id, inbox.sign(subject))
        await stage.settle()
        row = await stage.row(subject)
        assert (row["status"], row["xmtp_env"]) == ("verified", "dev")


async def test_log_is_fetched_incrementally(stage: Stage, node: XmtpNode) -> None:
    inbox, subject = new_inbox(node), did()
    await stage.bind(subject, inbox.id, inbox.sign(subject))
    await stage.settle()
    stored = await stage.xmtp.load_inbox_log(inbox.id, "production")
    assert stored.last_sequence_id == node.log(inbox.id)[-1].sequence_id and len(stored.updates) == 1
    node.publish(add_installation(inbox.id, inbox.wallet, InstallationKey.generate()))
    await stage.pool.execute("UPDATE bindings SET xmtp_next_check = now() - interval '1 second'")
    await stage.settle()
    stored = await stage.xmtp.load_inbox_log(inbox.id, "production")
    assert len(stored.updates) == 2 and (await stage.row(subject))["status"] == "verified"


async def test_a_new_record_restarts_the_check(stage: Stage, node: XmtpNode) -> None:
    inbox, subject = new_inbox(node), did()
    await stage.bind(subject, inbox.id, inbox.sign(subject))
    await stage.settle()
    await stage.bind(subject, inbox.id, inbox.sign(subject, InstallationKey.generate()), rev="3kbbbbbbbbb22")
    assert (await stage.row(subject))["status"] == "pending"
    await stage.settle()
    assert (await stage.row(subject))["status"] == "invalid"


async def test_on_demand_recheck(stage: Stage, node: XmtpNode) -> None:
    inbox, subject = new_inbox(node), did()
    await stage.bind(subject, inbox.id, inbox.sign(subject))
    await stage.settle()
    assert await stage.verifier.run_once() == 0  # nothing due for an hour
    assert await stage.xmtp.request_xmtp_recheck(inbox.id) == 1
    assert await stage.verifier.run_once() == 1


async def test_the_stored_log_only_grows_in_order(stage: Stage) -> None:
    # What two checks of one inbox racing each other, or a node answering below what was stored,
    # would write: nothing stored may repeat, reorder or shrink.
    inbox, env = secrets.token_hex(32), "production"
    first = await stage.xmtp.append_inbox_log(inbox, env, [(3, b"a"), (4, b"b")], had_updates=False)
    assert (first.sequence_ids, first.updates) == ([3, 4], [b"a", b"b"])
    # a racing append of [4, 5] computed from the same stored log: refused whole, not appended
    again = await stage.xmtp.append_inbox_log(inbox, env, [(4, b"b"), (5, b"c")], had_updates=False)
    assert again.sequence_ids == [3, 4]
    for bad in ([(6, b"x"), (6, b"y")], [(7, b"x"), (6, b"y")], [(0, b"x")], []):
        with pytest.raises(ValueError):
            await stage.xmtp.append_inbox_log(inbox, env, bad, had_updates=False)
    assert (await stage.xmtp.load_inbox_log(inbox, env)).sequence_ids == [3, 4]
    now = datetime.now(UTC)
    # a whole log replaces the stored one only if that still ends where the reader saw it, and is not longer
    assert not await stage.xmtp.replace_inbox_log(
        inbox, env, [(3, b"a")], read_at=now, expected_last=4, had_updates=False
    )
    assert not await stage.xmtp.replace_inbox_log(
        inbox, env, [(2, b"z"), (3, b"a"), (4, b"b")], read_at=now, expected_last=3, had_updates=False
    )
    assert await stage.xmtp.replace_inbox_log(
        inbox, env, [(2, b"z"), (3, b"a"), (4, b"b")], read_at=now, expected_last=4, had_updates=False
    )
    stored = await stage.xmtp.load_inbox_log(inbox, env)
    assert (stored.sequence_ids, stored.last_sequence_id, stored.read_at) == ([2, 3, 4], 4, now)
    await stage.xmtp.discard_inbox_log(inbox, env)
    assert (await stage.xmtp.load_inbox_log(inbox, env)).updates == []


def refused(env: str, reason: str) -> float:
    return REGISTRY.get_sample_value("atmx_xmtp_refused_total", {"env": env, "reason": reason}) or 0.0


async def test_an_undecided_smart_contract_wallet_signature_is_unverifiable(stage: Stage, node: XmtpNode) -> None:
    wallet, installation = EthKey.generate(), InstallationKey.generate()
    node.publish(scw_inbox(wallet, installation))
    inbox, verified, fresh = Inbox(wallet, installation, inbox_id(wallet.address, 0)), did(), did()
    await stage.bind(verified, inbox.id, inbox.sign(verified))
    await stage.settle()
    assert (await stage.row(verified))["status"] == "verified"

    # the node's chain lookup fails: no verdict on the signature, so none on the binding
    node.scw_answer = lambda _sig: (False, "execution reverted: rpc unavailable")
    before = refused("production", "scw_unverifiable")
    await stage.bind(fresh, inbox.id, inbox.sign(fresh))
    await stage.pool.execute("UPDATE bindings SET xmtp_next_check = now() - interval '1 second'")
    await stage.settle()
    for subject in (verified, fresh):
        row = await stage.row(subject)
        assert (row["status"], row["reason"], row["xmtp_env"], row["xmtp_attempts"]) == (
            "unverifiable",
            "xmtp_scw_unverifiable",
            "production",
            1,
        )
        assert row["xmtp_next_check"] == row["xmtp_checked_at"] + retry_delay(1)
    assert refused("production", "scw_unverifiable") == before + 2
    assert len((await stage.xmtp.load_inbox_log(inbox.id, "production")).updates) == 1  # kept: undecided

    node.scw_answer = lambda _sig: (True, None)
    await stage.pool.execute("UPDATE bindings SET xmtp_next_check = now() - interval '1 second'")
    await stage.settle()
    assert [(await stage.row(s))["status"] for s in (verified, fresh)] == ["verified", "verified"]
    # a signature the node judges invalid is a forged log
    node.scw_answer = lambda _sig: (False, None)
    await stage.pool.execute("UPDATE bindings SET xmtp_next_check = now() - interval '1 second'")
    await stage.settle()
    row = await stage.row(verified)
    assert (row["status"], row["reason"]) == ("invalid", "inbox_log_invalid:bad_signature")


def verifications(outcome: str, reason: str, env: str) -> float:
    labels = {"outcome": outcome, "reason": reason, "env": env}
    return REGISTRY.get_sample_value("atmx_xmtp_verifications_total", labels) or 0.0


@pytest.mark.parametrize(
    ("production", "dev", "expected"),
    [
        # one environment gave no verdict: unverifiable, and that environment is named
        ("unreachable", "not_found", ("unverifiable", "xmtp_unreachable", "production")),
        ("not_found", "unreachable", ("unverifiable", "xmtp_unreachable", "dev")),
        ("unreachable", "unreachable", ("unverifiable", "xmtp_unreachable", "production")),
        ("unreachable", "refuses", ("unverifiable", "xmtp_unreachable", "production")),
        # every environment answered: the first refusal decides
        ("refuses", "not_found", ("invalid", "no_matching_installation", "production")),
        ("not_found", "refuses", ("invalid", "no_matching_installation", "dev")),
        # not found anywhere: decided by every environment together
        ("not_found", "not_found", ("invalid", "inbox_not_found", "production,dev")),
        ("not_found", "verifies", ("verified", None, "dev")),
    ],
)
async def test_every_verdict_names_the_environment_that_decided(
    db_pool: asyncpg.Pool,
    node: XmtpNode,
    second_node: XmtpNode,
    production: str,
    dev: str,
    expected: tuple[str, str | None, str],
) -> None:
    subject = did()
    wallet, installation = EthKey.generate(), InstallationKey.generate()
    inbox = Inbox(wallet, installation, inbox_id(wallet.address, 0))
    for answer, env_node in ((production, node), (dev, second_node)):
        if answer == "unreachable":
            env_node.status = grpc.StatusCode.UNAVAILABLE
        elif answer == "refuses":  # the inbox exists there, but with another installation
            env_node.publish(create_inbox(wallet, 0, InstallationKey.generate()))
        elif answer == "verifies":
            env_node.publish(create_inbox(wallet, 0, installation))
    status, reason, env = expected
    before = verifications(status, reason or "ok", env)
    async for stage in make_stage(db_pool, {"production": node.url, "dev": second_node.url}):
        await stage.bind(subject, inbox.id, inbox.sign(subject))
        await stage.settle()
        row = await stage.row(subject)
        assert (row["status"], row["reason"], row["xmtp_env"]) == expected
    assert verifications(status, reason or "ok", env) == before + 1


async def test_a_verdict_that_changes_the_binding_is_announced_and_kept(stage: Stage, node: XmtpNode) -> None:
    inbox, subject = new_inbox(node), did()
    await stage.bind(subject, inbox.id, inbox.sign(subject))
    await stage.settle()
    verdicts = await stage.pool.fetch(
        "SELECT body FROM changes WHERE did = $1 AND body->>'action' = 'verdict' ORDER BY seq", subject
    )
    assert [v["body"]["status"] for v in verdicts] == ["verified"]
    assert verdicts[0]["body"]["binding"]["inboxId"] == inbox.id
    history = await stage.pool.fetch("SELECT action, status FROM binding_history WHERE did = $1 ORDER BY id", subject)
    assert [(h["action"], h["status"]) for h in history] == [("create", "pending"), ("verdict", "verified")]
    # the recheck finds the same: nothing new is announced
    await stage.pool.execute("UPDATE bindings SET xmtp_next_check = now() WHERE did = $1", subject)
    await stage.settle()
    assert await stage.pool.fetchval("SELECT count(*) FROM changes WHERE did = $1", subject) == 2
