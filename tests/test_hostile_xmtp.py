"""Hostile network tier for XMTP: the real XMTP stage against a lying node.

Real parts: `XmtpVerifier` on a real PostgreSQL, identity logs made and signed by real libxmtp
(`xmtp-bindings`) on the loopback node, DIDs signed with libxmtp installation keys. The only
stand-in is the node's honesty: `tests/xmtp_node.py` lies on purpose (`Lie`), or a man in the middle
(`XmtpMitm`) on the plaintext link swaps its answers. Every attack must end with the binding not
`verified`, a binding verified before the lie turned to the status the lie deserves, the lie
counted in `atmx_xmtp_refused_total`, nothing of the lie kept in the stored log, and the honest
verdict back once the node tells the truth again.

What each lie earns (verdict; reason counted in atmx_xmtp_refused_total):

- another inbox's log, or a man in the middle that swaps answers and rewrites their inbox id:
  `invalid/inbox_id_mismatch`; `inbox_id_mismatch`
- a log cut at its start, or updates served again under new ids: `invalid/inbox_log_invalid:<why>`;
  `inbox_log_invalid:<why>`
- a log shorter than, or reordered below, the stored one: `unverifiable/xmtp_log_rewritten`;
  `log_rewritten`
- newest first, a repeated sequence id, an answer naming another inbox (a plain swap in the middle):
  `unverifiable/xmtp_bad_response`; `bad_response`
- a hole (an update left out): what the holed log says until the hole is filled, counted in
  atmx_xmtp_log_repairs_total{kind="gap_filled"}
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import REGISTRY
from xmtp_keys import EthKey, InstallationKey, inbox_id
from xmtp_node import Lie, XmtpMitm, XmtpNode
from xmtp_stage import Inbox, Stage, did, make_stage, scw_inbox

from atmx.indexer.xmtp.proto import association_pb2 as pb
from atmx.indexer.xmtp.verifier import FULL_READ_EVERY

try:
    from xmtp_libxmtp import Installation, LibxmtpInbox

    LIBXMTP_MISSING = ""
except ImportError as exc:
    LIBXMTP_MISSING = f"xmtp-bindings (a test dependency: pip install -e '.[test]') is missing: {exc}"

ENV = "production"

MakeInbox = Callable[[], Awaitable["LibxmtpInbox"]]


@pytest.fixture(autouse=True)
def _libxmtp_installed() -> None:
    # as in test_xmtp_libxmtp.py: a green run means libxmtp really made these logs
    if LIBXMTP_MISSING:
        if os.environ.get("ATMX_SKIP_LIBXMTP") == "1":
            pytest.skip(LIBXMTP_MISSING)
        pytest.fail(f"{LIBXMTP_MISSING} (set ATMX_SKIP_LIBXMTP=1 to skip on purpose)", pytrace=False)


@pytest.fixture
def node() -> Iterator[XmtpNode]:
    with XmtpNode() as n:
        yield n


@pytest.fixture
async def stage(db_pool: asyncpg.Pool, node: XmtpNode) -> AsyncIterator[Stage]:
    async for s in make_stage(db_pool, {ENV: node.url}):
        yield s


@pytest.fixture
async def libxmtp(node: XmtpNode, tmp_path: Path) -> AsyncIterator[MakeInbox]:
    made: list[LibxmtpInbox] = []

    async def make() -> LibxmtpInbox:
        inbox = await LibxmtpInbox.create(node.url, tmp_path)
        made.append(inbox)
        return inbox

    yield make
    for inbox in made:
        inbox.close()


def refused(reason: str, env: str = ENV) -> float:
    return REGISTRY.get_sample_value("atmx_xmtp_refused_total", {"env": env, "reason": reason}) or 0.0


async def bind(stage: Stage, inbox: LibxmtpInbox, subject: str, signer: Installation | None = None) -> None:
    """Publish the org.xmtp.inbox record libxmtp would make for `subject` (repo-verified: pending)."""
    await stage.bind(subject, inbox.inbox_id, inbox.inbox_record(subject, signer)["verificationSignature"])


async def recheck(stage: Stage) -> None:
    """Every binding due now (the recheck hour or the retry delay passed), then run the stage."""
    await stage.pool.execute("UPDATE bindings SET xmtp_next_check = now() - interval '1 second'")
    await stage.settle()


async def status(stage: Stage, subject: str) -> tuple[str, str | None, str | None]:
    row = await stage.row(subject)
    return row["status"], row["reason"], row["xmtp_env"]


async def stored_log(stage: Stage, inbox_id: str) -> list[tuple[int, str]]:
    """(sequence id, inbox id the update names) of every stored entry."""
    log = await stage.xmtp.load_inbox_log(inbox_id, ENV)
    return [(s, pb.IdentityUpdate.FromString(u).inbox_id) for s, u in zip(log.sequence_ids, log.updates, strict=True)]


def seqs(node: XmtpNode, inbox: LibxmtpInbox) -> list[int]:
    return [e.sequence_id for e in node.log(inbox.inbox_id)]


# --- another inbox's log -------------------------------------------------------------------------


async def test_another_inboxs_log_is_refused(stage: Stage, node: XmtpNode, libxmtp: MakeInbox) -> None:
    victim, attacker = await libxmtp(), await libxmtp()
    honest, forged = did(), did()
    await bind(stage, victim, honest)
    await stage.settle()
    assert await status(stage, honest) == ("verified", None, ENV)
    genuine = await stored_log(stage, victim.inbox_id)

    # The forged record claims the victim's inbox with the attacker's installation key; the node
    # answers GetIdentityUpdates(victim) with the attacker's genuine, signed log.
    node.lies[victim.inbox_id] = Lie(log_of=attacker.inbox_id)
    before = refused("inbox_id_mismatch")
    await stage.bind(forged, victim.inbox_id, attacker.inbox_record(forged)["verificationSignature"])
    await recheck(stage)
    assert await status(stage, forged) == ("invalid", "inbox_id_mismatch", ENV)
    assert await status(stage, honest) == ("invalid", "inbox_id_mismatch", ENV)
    assert refused("inbox_id_mismatch") == before + 2
    # nothing of the attacker's log is kept under the victim's inbox
    assert await stored_log(stage, victim.inbox_id) == genuine

    del node.lies[victim.inbox_id]
    await recheck(stage)
    assert await status(stage, honest) == ("verified", None, ENV)
    assert await status(stage, forged) == ("invalid", "no_matching_installation", ENV)


async def test_another_inboxs_log_on_first_sight_is_not_stored(
    stage: Stage, node: XmtpNode, libxmtp: MakeInbox
) -> None:
    victim, attacker = await libxmtp(), await libxmtp()
    forged = did()
    node.lies[victim.inbox_id] = Lie(log_of=attacker.inbox_id)
    signature = attacker.inbox_record(forged)["verificationSignature"]
    await stage.bind(forged, victim.inbox_id, signature)
    await stage.settle()
    assert await status(stage, forged) == ("invalid", "inbox_id_mismatch", ENV)
    assert await stored_log(stage, victim.inbox_id) == []


async def test_a_stored_log_of_another_inbox_is_discarded(stage: Stage, node: XmtpNode, libxmtp: MakeInbox) -> None:
    # What an atmx without the inbox check stored from a lying node: the attacker's log under the
    # victim's inbox. It must not poison later checks against an honest node.
    victim, attacker = await libxmtp(), await libxmtp()
    honest = did()
    planted = [(e.sequence_id, e.update) for e in node.log(attacker.inbox_id)]
    await stage.xmtp.append_inbox_log(victim.inbox_id, ENV, planted, had_updates=False)
    before = refused("stored_log_invalid")
    await bind(stage, victim, honest)
    await stage.settle()
    assert await status(stage, honest) == ("verified", None, ENV)
    assert refused("stored_log_invalid") == before + 1
    assert {inbox for _, inbox in await stored_log(stage, victim.inbox_id)} == {victim.inbox_id}


# --- a truncated log -----------------------------------------------------------------------------


async def test_a_log_cut_at_its_start_is_refused_and_not_kept(stage: Stage, node: XmtpNode, libxmtp: MakeInbox) -> None:
    inbox = await libxmtp()
    second = await inbox.add_installation()
    subject = did()
    first_seq = seqs(node, inbox)[0]
    node.lies[inbox.inbox_id] = Lie(drop=frozenset({first_seq}))  # no CreateInbox: the log cannot fold
    before = refused("inbox_log_invalid:bad_update")
    await bind(stage, inbox, subject, second)
    await stage.settle()
    assert await status(stage, subject) == ("invalid", "inbox_log_invalid:bad_update", ENV)
    assert refused("inbox_log_invalid:bad_update") == before + 1
    assert await stored_log(stage, inbox.inbox_id) == []  # not kept to poison the next check

    del node.lies[inbox.inbox_id]
    await recheck(stage)
    assert await status(stage, subject) == ("verified", None, ENV)


async def test_a_log_shorter_than_the_stored_one_is_refused(stage: Stage, node: XmtpNode, libxmtp: MakeInbox) -> None:
    # The node served the revocation once, then hides it: a log that shrinks below what atmx stored.
    inbox = await libxmtp()
    spare = await inbox.add_installation()
    signer = inbox.installations[0]
    kept, revoked = did(), did()
    await bind(stage, inbox, kept, spare)
    await bind(stage, inbox, revoked, signer)
    await stage.settle()
    await inbox.revoke(signer, via=spare)
    await recheck(stage)
    assert await status(stage, revoked) == ("invalid", "no_matching_installation", ENV)
    assert await status(stage, kept) == ("verified", None, ENV)
    stored = await stored_log(stage, inbox.inbox_id)
    assert len(stored) == 3

    node.lies[inbox.inbox_id] = Lie(keep=2)
    before = refused("log_rewritten")
    await recheck(stage)
    assert await status(stage, revoked) == ("unverifiable", "xmtp_log_rewritten", ENV)
    assert await status(stage, kept) == ("unverifiable", "xmtp_log_rewritten", ENV)
    assert refused("log_rewritten") == before + 2
    assert await stored_log(stage, inbox.inbox_id) == stored  # the revocation stays known

    del node.lies[inbox.inbox_id]
    await recheck(stage)
    assert await status(stage, revoked) == ("invalid", "no_matching_installation", ENV)
    assert await status(stage, kept) == ("verified", None, ENV)


@pytest.mark.parametrize("deep", [False, True])
async def test_a_hole_filled_later_is_kept(stage: Stage, node: XmtpNode, libxmtp: MakeInbox, deep: bool) -> None:
    # A node that left an update out and serves it later adds to what atmx knows and drops nothing:
    # the longer log is kept (and the hole counted), so the installation it adds is found. A hole
    # just before the last stored update shows at the next check (the fetch overlaps the stored
    # log by one update); a deeper one at the next full read of the log.
    inbox = await libxmtp()
    second = await inbox.add_installation()
    await inbox.add_installation()
    if deep:
        await inbox.add_installation()
    subject = did()
    hole = seqs(node, inbox)[1]
    node.lies[inbox.inbox_id] = Lie(drop=frozenset({hole}))
    await bind(stage, inbox, subject, second)
    await stage.settle()
    assert await status(stage, subject) == ("invalid", "no_matching_installation", ENV)
    assert [s for s, _ in await stored_log(stage, inbox.inbox_id)] == [s for s in seqs(node, inbox) if s != hole]

    del node.lies[inbox.inbox_id]
    before = REGISTRY.get_sample_value("atmx_xmtp_log_repairs_total", {"env": ENV, "kind": "gap_filled"}) or 0.0
    if deep:
        await recheck(stage)
        assert await status(stage, subject) == ("invalid", "no_matching_installation", ENV)
        stage.clock.offset += FULL_READ_EVERY
    await recheck(stage)
    assert await status(stage, subject) == ("verified", None, ENV)
    assert [s for s, _ in await stored_log(stage, inbox.inbox_id)] == seqs(node, inbox)
    after = REGISTRY.get_sample_value("atmx_xmtp_log_repairs_total", {"env": ENV, "kind": "gap_filled"}) or 0.0
    assert after == before + 1


# --- the wrong order -----------------------------------------------------------------------------


async def test_newest_first_is_a_bad_response(stage: Stage, node: XmtpNode, libxmtp: MakeInbox) -> None:
    inbox = await libxmtp()
    await inbox.add_installation()
    subject = did()
    node.lies[inbox.inbox_id] = Lie(reverse=True)
    before = refused("bad_response")
    await bind(stage, inbox, subject)
    await stage.settle()
    row = await stage.row(subject)
    assert (row["status"], row["reason"], row["xmtp_env"], row["xmtp_attempts"]) == (
        "unverifiable",
        "xmtp_bad_response",
        ENV,
        1,
    )
    assert refused("bad_response") == before + 1
    assert await stored_log(stage, inbox.inbox_id) == []
    del node.lies[inbox.inbox_id]
    await recheck(stage)
    assert await status(stage, subject) == ("verified", None, ENV)

    # verified, then the node serves what is new (with the update it overlaps) newest first
    await inbox.add_installation()
    node.lies[inbox.inbox_id] = Lie(reverse=True)
    await recheck(stage)
    assert await status(stage, subject) == ("unverifiable", "xmtp_bad_response", ENV)
    assert refused("bad_response") == before + 2
    assert len(await stored_log(stage, inbox.inbox_id)) == 2


async def test_a_reordered_log_cannot_bring_back_a_revoked_installation(
    stage: Stage, node: XmtpNode, libxmtp: MakeInbox
) -> None:
    # Served as [create, revoke, add] the revoked installation would be current again; atmx stored
    # [create, add, revoke] before, so the node contradicts itself.
    inbox = await libxmtp()
    spare = await inbox.add_installation()
    signer = inbox.installations[0]
    revoked, kept = did(), did()
    await bind(stage, inbox, revoked, spare)
    await bind(stage, inbox, kept, signer)
    await stage.settle()
    assert await status(stage, revoked) == ("verified", None, ENV)
    await inbox.revoke(spare, via=signer)
    await recheck(stage)
    assert await status(stage, revoked) == ("invalid", "no_matching_installation", ENV)
    assert await status(stage, kept) == ("verified", None, ENV)

    node.lies[inbox.inbox_id] = Lie(order=(0, 2, 1))
    before = refused("log_rewritten")
    await recheck(stage)
    assert await status(stage, revoked) == ("unverifiable", "xmtp_log_rewritten", ENV)
    assert await status(stage, kept) == ("unverifiable", "xmtp_log_rewritten", ENV)
    assert refused("log_rewritten") == before + 2
    assert [s for s, _ in await stored_log(stage, inbox.inbox_id)] == seqs(node, inbox)


# --- duplicated sequence ids ---------------------------------------------------------------------


async def test_a_repeated_sequence_id_is_a_bad_response(stage: Stage, node: XmtpNode, libxmtp: MakeInbox) -> None:
    inbox = await libxmtp()
    subject = did()
    await bind(stage, inbox, subject)
    await stage.settle()
    assert await status(stage, subject) == ("verified", None, ENV)
    node.lies[inbox.inbox_id] = Lie(duplicate=True)
    before = refused("bad_response")
    await recheck(stage)
    assert await status(stage, subject) == ("unverifiable", "xmtp_bad_response", ENV)
    assert refused("bad_response") == before + 1
    assert len(await stored_log(stage, inbox.inbox_id)) == 1


async def test_updates_served_again_under_new_sequence_ids_are_not_kept(
    stage: Stage, node: XmtpNode, libxmtp: MakeInbox
) -> None:
    inbox = await libxmtp()
    subject = did()
    await bind(stage, inbox, subject)
    await stage.settle()
    assert await status(stage, subject) == ("verified", None, ENV)
    node.lies[inbox.inbox_id] = Lie(replay=True)  # the CreateInbox again, as a new update
    before = refused("inbox_log_invalid:bad_update")
    await recheck(stage)
    assert await status(stage, subject) == ("invalid", "inbox_log_invalid:bad_update", ENV)
    assert refused("inbox_log_invalid:bad_update") == before + 1
    assert [s for s, _ in await stored_log(stage, inbox.inbox_id)] == seqs(node, inbox)

    del node.lies[inbox.inbox_id]
    await recheck(stage)
    assert await status(stage, subject) == ("verified", None, ENV)


# --- a plaintext man in the middle ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("disguise", "expected", "counted"),
    [
        (False, ("unverifiable", "xmtp_bad_response"), "bad_response"),
        (True, ("invalid", "inbox_id_mismatch"), "inbox_id_mismatch"),
    ],
)
async def test_a_man_in_the_middle_swapping_answers(
    db_pool: asyncpg.Pool,
    node: XmtpNode,
    libxmtp: MakeInbox,
    disguise: bool,
    expected: tuple[str, str],
    counted: str,
) -> None:
    victim, attacker = await libxmtp(), await libxmtp()
    honest, forged = did(), did()
    with XmtpMitm(node.url) as mitm:
        async for stage in make_stage(db_pool, {ENV: mitm.url}):
            await bind(stage, victim, honest)
            await stage.settle()
            assert await status(stage, honest) == ("verified", None, ENV)

            mitm.swap = {victim.inbox_id: attacker.inbox_id, attacker.inbox_id: victim.inbox_id}
            mitm.disguise = disguise
            before = refused(counted)
            await stage.bind(forged, victim.inbox_id, attacker.inbox_record(forged)["verificationSignature"])
            await recheck(stage)
            assert mitm.swapped >= 2
            assert await status(stage, forged) == (*expected, ENV)
            assert await status(stage, honest) == (*expected, ENV)
            assert refused(counted) == before + 2
            assert {inbox for _, inbox in await stored_log(stage, victim.inbox_id)} == {victim.inbox_id}

            mitm.swap = {}
            await recheck(stage)
            assert await status(stage, honest) == ("verified", None, ENV)
            assert await status(stage, forged) == ("invalid", "no_matching_installation", ENV)


def non_loopback_address() -> str | None:
    """An address of this host that is not loopback (what a remote XMTP endpoint looks like), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent, only a route is chosen
            address: str = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


async def test_a_man_in_the_middle_cannot_vouch_for_a_smart_contract_wallet(
    db_pool: asyncpg.Pool, node: XmtpNode
) -> None:
    # Smart-contract-wallet verdicts are the one thing atmx takes from the node unsigned. On a
    # plaintext link to another host, whoever sits in the middle could answer them: here a log
    # whose wallet signatures are junk (the honest node says so) and a middle that says "valid".
    address = non_loopback_address()
    if address is None:
        pytest.skip("no non-loopback address on this host to stand for a remote plaintext endpoint")
    wallet, attacker = EthKey.generate(), InstallationKey.generate()
    node.publish(scw_inbox(wallet, attacker))
    node.scw_answer = lambda _sig: (False, None)
    inbox, subject = Inbox(wallet, attacker, inbox_id(wallet.address, 0)), did()
    with XmtpMitm(node.url, host=address) as mitm:
        mitm.scw_valid = True
        async for stage in make_stage(db_pool, {ENV: mitm.url}):
            before = refused("scw_unverifiable")
            await stage.bind(subject, inbox.id, inbox.sign(subject))
            await stage.settle()
            assert await status(stage, subject) == ("unverifiable", "xmtp_scw_unverifiable", ENV)
            assert refused("scw_unverifiable") == before + 1
