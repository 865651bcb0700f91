"""The XMTP stage on a real database and a loopback XMTP node, as its tests drive it: inboxes
made with real keys (tests/xmtp_keys.py), bindings written through the index's write path,
and a clock the test can move forward."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from xmtp_keys import EthKey, InstallationKey, create_inbox, inbox_id, now_ns
from xmtp_node import XmtpNode

from atmx.indexer.index.writes import BindingRow, WriteSet
from atmx.indexer.store.index_store import Store
from atmx.indexer.store.xmtp_store import XmtpStore
from atmx.indexer.xmtp.client import XmtpNetwork
from atmx.indexer.xmtp.ed25519ph import PUBLIC_SIGNATURE_CONTEXT
from atmx.indexer.xmtp.proto import association_pb2 as pb
from atmx.indexer.xmtp.proto import signature_pb2 as sig_pb
from atmx.indexer.xmtp.signatures import signature_text
from atmx.indexer.xmtp.verifier import XmtpVerifier


def did() -> str:
    return "did:plc:" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(24))


@dataclass
class Inbox:
    wallet: EthKey
    installation: InstallationKey
    id: str

    def sign(self, subject: str, installation: InstallationKey | None = None) -> str:
        sig = (installation or self.installation).sign_ph(subject, PUBLIC_SIGNATURE_CONTEXT)
        return base64.b64encode(sig).decode()


class Clock:
    """Real time plus an offset the test can move forward."""

    def __init__(self) -> None:
        self.offset = timedelta()
        self.last = datetime.now(UTC)

    def __call__(self) -> datetime:
        self.last = datetime.now(UTC) + self.offset
        return self.last


def new_inbox(node: XmtpNode) -> Inbox:
    wallet, installation = EthKey.generate(), InstallationKey.generate()
    node.publish(create_inbox(wallet, 0, installation))
    return Inbox(wallet, installation, inbox_id(wallet.address, 0))


@dataclass
class Stage:
    verifier: XmtpVerifier
    store: Store
    xmtp: XmtpStore
    pool: asyncpg.Pool
    clock: Clock

    async def bind(self, subject: str, inbox: str, signature: str, rev: str = "3kaaaaaaaaa22") -> None:
        record = {"id": inbox, "verificationSignature": signature, "createdAt": "2026-11-01T00:00:00Z"}
        row = BindingRow(
            subject, "org.xmtp.inbox", "self", "xmtp", f"bafy{rev}", rev, record, "pending", None, inbox, None
        )
        await self.store.apply([WriteSet(did=subject, create_account=True, upserts=[row])], None)

    async def row(self, subject: str) -> asyncpg.Record:
        row = await self.pool.fetchrow("SELECT * FROM bindings WHERE did = $1 AND protocol = 'xmtp'", subject)
        assert row is not None
        return row

    async def settle(self) -> None:
        """Run every check that is due now (database time is the real clock)."""
        while await self.verifier.run_once():
            pass


async def make_stage(db_pool: asyncpg.Pool, envs: dict[str, str]) -> AsyncIterator[Stage]:
    clock = Clock()
    async with XmtpNetwork(envs, timeout=2.0) as network:
        store = Store(db_pool)
        xmtp = XmtpStore(db_pool)
        verifier = XmtpVerifier(xmtp, network, recheck=timedelta(hours=1), clock=clock)
        yield Stage(verifier, store, xmtp, db_pool, clock)


def scw_inbox(wallet: EthKey, installation: InstallationKey) -> pb.IdentityUpdate:
    """An inbox created by a smart-contract wallet (ERC-6492) that adds one installation: both
    wallet signatures are the node's to check (VerifySmartContractWalletSignatures)."""
    update = pb.IdentityUpdate(inbox_id=inbox_id(wallet.address, 0), client_timestamp_ns=now_ns())
    account = f"eip155:1:{wallet.address}"
    create = update.actions.add().create_inbox
    create.initial_identifier, create.initial_identifier_kind = wallet.address, pb.IDENTIFIER_KIND_ETHEREUM
    create.initial_identifier_signature.erc_6492.CopyFrom(
        sig_pb.SmartContractWalletSignature(account_id=account, block_number=7, signature=b"create-proof")
    )
    add = update.actions.add().add
    add.new_member_identifier.CopyFrom(installation.member_identifier())
    add.existing_member_signature.erc_6492.CopyFrom(
        sig_pb.SmartContractWalletSignature(account_id=account, block_number=7, signature=b"add-proof")
    )
    add.new_member_signature.erc_191.bytes = bytes(65)  # the text covers identifiers only
    add.new_member_signature.CopyFrom(installation.signature(signature_text(update)))
    return update
