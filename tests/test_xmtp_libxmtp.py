"""Real libxmtp (xmtp-bindings, libxmtp v1.10.0) on the loopback node, read back by atmx's client.

An identity is registered, gets a second installation, signs a DID with it, and then has that
installation revoked - all through libxmtp. atmx's client fetches the log the node stored; atmx's
fold of that log must agree with libxmtp's own `inbox_state`, and the DID signature must check
before and fail after the revocation.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from xmtp_node import XmtpNode

from atmx.indexer.xmtp.client import XmtpNetwork

try:
    from xmtp_libxmtp import LibxmtpInbox

    LIBXMTP_MISSING = ""
except ImportError as exc:
    LIBXMTP_MISSING = f"xmtp-bindings (a test dependency: pip install -e '.[test]') is missing: {exc}"

try:
    from atmx.indexer.xmtp.association import fold_identity_log
    from atmx.indexer.xmtp.binding import check_binding

    FOLD_MISSING = ""
except ImportError as exc:  # written in parallel; the fetch half of these tests stands without it
    FOLD_MISSING = f"atmx.indexer.xmtp association/binding not available yet: {exc}"

pytestmark = pytest.mark.slow

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"


@pytest.fixture(autouse=True)
def _libxmtp_installed() -> None:
    # Like the devnet tier: a missing install fails, so that a green run means libxmtp really ran.
    if LIBXMTP_MISSING:
        if os.environ.get("ATMX_SKIP_LIBXMTP") == "1":
            pytest.skip(LIBXMTP_MISSING)
        pytest.fail(f"{LIBXMTP_MISSING} (set ATMX_SKIP_LIBXMTP=1 to skip on purpose)", pytrace=False)


@pytest.fixture(scope="module")
def node() -> Iterator[XmtpNode]:
    with XmtpNode() as n:
        yield n


@pytest.fixture
async def net(node: XmtpNode) -> AsyncIterator[XmtpNetwork]:
    async with XmtpNetwork({"local": node.url}) as n:
        yield n


@pytest.fixture
async def inbox(node: XmtpNode, tmp_path: Path) -> AsyncIterator[LibxmtpInbox]:
    created = await LibxmtpInbox.create(node.url, tmp_path)
    yield created
    created.close()


async def test_registration_is_served_to_atmx(node: XmtpNode, net: XmtpNetwork, inbox: LibxmtpInbox) -> None:
    first = inbox.installations[0]
    assert len(first.id) == 32
    # The inbox id is SHA-256(address || "0") as section 2.3 of the research notes says.
    assert inbox.inbox_id == hashlib.sha256(f"{inbox.wallet.address}0".encode()).hexdigest()
    logs = await net.get_identity_updates("local", inbox.inbox_id)
    assert len(logs) == 1
    actions = logs[0].update.actions
    assert [a.WhichOneof("kind") for a in actions] == ["create_inbox", "add"]
    assert actions[0].create_inbox.initial_identifier == inbox.wallet.address
    assert bytes(actions[1].add.new_member_identifier.installation_public_key) == first.id
    assert logs[0].update.inbox_id == inbox.inbox_id
    assert "PublishIdentityUpdate" in node.calls and "GetInboxIds" in node.calls
    assert await inbox.installation_ids() == {first.id}


async def test_did_signature_from_libxmtp(inbox: LibxmtpInbox) -> None:
    first = inbox.installations[0]
    sig = first.sign(DID)
    assert len(sig) == 64
    assert sig == first.sign(DID)  # Ed25519ph is deterministic
    assert first.verify(DID, sig, first.id)
    assert not first.verify("did:plc:someoneelse", sig, first.id)
    record = inbox.inbox_record(DID)
    assert record["id"] == inbox.inbox_id
    assert base64.b64decode(record["verificationSignature"]) == sig
    assert record["createdAt"].endswith("Z")


async def test_fold_matches_libxmtp_through_revocation(net: XmtpNetwork, inbox: LibxmtpInbox) -> None:
    first = inbox.installations[0]
    second = await inbox.add_installation()
    assert second.id != first.id
    assert await inbox.installation_ids() == {first.id, second.id}
    sig = second.sign(DID)

    logs = await net.get_identity_updates("local", inbox.inbox_id)
    assert len(logs) == 2
    # The second installation joins with an add only (GetInboxIds found the inbox).
    assert [a.WhichOneof("kind") for a in logs[1].update.actions] == ["add"]

    text = await inbox.revoke(second)
    assert f"- Revoke messaging access from app\n  (ID: {second.id.hex()})" in text
    assert await inbox.installation_ids() == {first.id}

    # Incremental fetch: only the revocation is new.
    new = await net.get_identity_updates("local", inbox.inbox_id, logs[-1].sequence_id)
    assert len(new) == 1
    revoke = new[0].update.actions[0]
    assert revoke.WhichOneof("kind") == "revoke"
    assert bytes(revoke.revoke.member_to_revoke.installation_public_key) == second.id
    assert revoke.revoke.recovery_identifier_signature.WhichOneof("signature") == "erc_191"

    if FOLD_MISSING:
        pytest.skip(FOLD_MISSING)
    before = fold_identity_log([(log.sequence_id, log.update) for log in logs])
    assert set(before.installations) == {first.id, second.id}
    assert check_binding(DID, sig, before.installations) == second.id
    assert check_binding("did:plc:someoneelse", sig, before.installations) is None

    after = fold_identity_log([(log.sequence_id, log.update) for log in logs + new])
    assert set(after.installations) == await inbox.installation_ids() == {first.id}
    # Folding only the new entry onto the previous state agrees (what rechecks do).
    assert fold_identity_log([(new[0].sequence_id, new[0].update)], previous=before).installations == {first.id}
    assert check_binding(DID, sig, after.installations) is None
    # The surviving installation still binds the DID.
    assert check_binding(DID, first.sign(DID), after.installations) == first.id


async def test_timings(node: XmtpNode, net: XmtpNetwork, tmp_path: Path) -> None:
    # A loose bound that catches a hang or a retry loop inside libxmtp (it takes ~0.1 s here).
    started = time.monotonic()
    created = await LibxmtpInbox.create(node.url, tmp_path)
    try:
        assert time.monotonic() - started < 20
        assert len(await net.get_identity_updates("local", created.inbox_id)) == 1
    finally:
        created.close()
