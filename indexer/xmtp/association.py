"""XMTP identity log -> association state (inbox members and installation keys); pure.

Mirrors libxmtp `crates/xmtp_id/src/associations` (v1.10.0): every update's signatures are checked
against the update's signature text (`signatures.py`), the actions are applied in order, and any
failure makes the whole log invalid (libxmtp `get_state` does the same; the node validated each
update on publish, so a failure means forged or corrupted data). One deliberate difference, which
only refuses more: replay keys are canonical (see `signatures.py`), so a re-encoded copy of a seen
signature is a replay too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from google.protobuf.message import DecodeError

from atmx.indexer.xmtp.proto import association_pb2 as pb
from atmx.indexer.xmtp.proto import envelopes_pb2 as env_pb
from atmx.indexer.xmtp.signatures import (
    Action,
    Add,
    AssociationError,
    ChangeRecovery,
    Create,
    MemberId,
    MemberKind,
    Revoke,
    ScwVerifier,
    SignatureVerifier,
    Verified,
    decode_update,
    eip191_hash,
    eth_address,
    inbox_id_for,
    legacy_key_text,
    parse_action,
    recover_erc191,
    signature_text,
    update_text,
)

__all__ = [
    "MAX_LOG_ACTIONS",
    "MAX_LOG_UPDATES",
    "AssociationError",
    "AssociationState",
    "EnvelopeEntry",
    "MemberId",
    "MemberInfo",
    "MemberKind",
    "ScwCheck",
    "ScwVerifier",
    "decode_update",
    "eip191_hash",
    "eth_address",
    "fold_identity_log",
    "identity_topic",
    "identity_update_from_envelope",
    "inbox_id_for",
    "legacy_key_text",
    "recover_erc191",
    "require_inbox",
    "signature_text",
    "smart_contract_wallet_checks",
]

MAX_LOG_UPDATES: Final = 256  # node-go caps an inbox log at 256 updates
MAX_LOG_ACTIONS: Final = 4096  # bounds the signature work a log can ask for (about 4 s worst case)


@dataclass(frozen=True, slots=True)
class MemberInfo:
    added_by: MemberId | None
    chain_id: int | None  # set for smart-contract-wallet members


@dataclass(frozen=True, slots=True)
class AssociationState:
    """The folded state. Feed it back as `previous` to fold only newer updates."""

    inbox_id: str
    recovery_identifier: MemberId
    members: Mapping[MemberId, MemberInfo]
    last_sequence_id: int
    update_count: int
    action_count: int
    node_trusted_scw: bool  # some signature was accepted on the node's VerifySmartContractWalletSignatures
    seen_signatures: frozenset[bytes] = field(repr=False)

    @property
    def installations(self) -> frozenset[bytes]:
        return frozenset(m.key for m in self.members if m.kind is MemberKind.INSTALLATION)


# ---- the fold ---------------------------------------------------------------------------------

_ALLOWED: Final = {
    MemberKind.ETHEREUM: frozenset({"erc191", "erc1271", "legacy"}),
    MemberKind.INSTALLATION: frozenset({"installation_key"}),
    MemberKind.PASSKEY: frozenset({"p256"}),
}


def _require_allowed(kind: MemberKind, verified: Verified) -> None:
    if verified.kind not in _ALLOWED[kind]:
        raise AssociationError("unauthorized", f"{verified.kind} signature not allowed for a {kind.value} member")


class _Fold:
    def __init__(self, previous: AssociationState | None) -> None:
        self.created = previous is not None
        self.inbox_id = previous.inbox_id if previous else ""
        self.recovery = previous.recovery_identifier if previous else MemberId(MemberKind.ETHEREUM, b"")
        self.members: dict[MemberId, MemberInfo] = dict(previous.members) if previous else {}
        self.seen: set[bytes] = set(previous.seen_signatures) if previous else set()
        self.scw = previous.node_trusted_scw if previous else False
        self.actions = previous.action_count if previous else 0

    def _replay_check(self, *signatures: Verified) -> None:
        for verified in signatures:
            if verified.replay_key in self.seen:
                raise AssociationError("replayed_signature", "signature was already used in this inbox log")

    def _chain_check(self, verified: Verified) -> None:
        member = self.members.get(verified.signer)
        if member is not None and member.chain_id != verified.chain_id:
            raise AssociationError("unauthorized", "smart-contract-wallet signature from another chain")

    def _require_created(self) -> None:
        if not self.created:
            raise AssociationError("bad_update", "inbox log does not start with CreateInbox")

    def create(self, action: Create, verified: Verified) -> None:
        if self.created:
            raise AssociationError("bad_update", "inbox created twice")
        if verified.signer != action.identifier:
            raise AssociationError("bad_signature", "CreateInbox is not signed by its initial identifier")
        _require_allowed(action.identifier.kind, verified)
        if verified.kind == "legacy" and action.nonce != 0:
            raise AssociationError("unauthorized", "legacy keys may only create the nonce-0 inbox")
        self.created = True
        self.inbox_id = inbox_id_for(action.identifier, action.nonce)
        self.recovery = action.identifier
        self.members[action.identifier] = MemberInfo(None, verified.chain_id)

    def add(self, action: Add, new: Verified, existing: Verified) -> None:
        self._require_created()
        self._replay_check(existing, new)
        if new.signer != action.new_member:
            raise AssociationError("bad_signature", "new member signature is not by the new member")
        if new.signer == existing.signer:
            raise AssociationError("bad_update", "a member cannot add itself")
        if (
            "legacy" in (new.kind, existing.kind)
            and existing.signer.kind is not MemberKind.INSTALLATION
            and self.inbox_id != inbox_id_for(existing.signer, 0)
        ):
            raise AssociationError("unauthorized", "legacy keys may only act in the nonce-0 inbox")
        _require_allowed(action.new_member.kind, new)
        if existing.signer in self.members:
            self._chain_check(existing)
        elif existing.signer != self.recovery:
            raise AssociationError("not_a_member", "AddAssociation signed by a non-member")
        elif existing.kind == "legacy":
            raise AssociationError("unauthorized", "the recovery identifier may not act through a legacy key")
        _require_allowed(existing.signer.kind, existing)
        if existing.signer.kind is MemberKind.INSTALLATION and action.new_member.kind is MemberKind.INSTALLATION:
            raise AssociationError("unauthorized", "an installation cannot add an installation")
        self.members[action.new_member] = MemberInfo(existing.signer, new.chain_id)

    def revoke(self, action: Revoke, verified: Verified) -> None:
        self._require_created()
        self._replay_check(verified)
        self._chain_check(verified)
        if verified.kind == "legacy":
            raise AssociationError("unauthorized", "legacy keys may not revoke")
        if verified.signer != self.recovery:
            raise AssociationError("unauthorized", "only the recovery identifier may revoke")
        children = [
            m
            for m, info in self.members.items()
            if info.added_by == action.member and m.kind is MemberKind.INSTALLATION
        ]
        self.members.pop(action.member, None)
        for child in children:
            self.members.pop(child, None)

    def change_recovery(self, action: ChangeRecovery, verified: Verified) -> None:
        self._require_created()
        self._replay_check(verified)
        self._chain_check(verified)
        if verified.kind == "legacy":
            raise AssociationError("unauthorized", "legacy keys may not change the recovery identifier")
        if verified.signer != self.recovery:
            raise AssociationError("unauthorized", "only the recovery identifier may change it")
        self.recovery = action.new_recovery

    def apply(self, update: pb.IdentityUpdate, scw_verifier: ScwVerifier | None) -> None:
        self.actions += len(update.actions)
        if self.actions > MAX_LOG_ACTIONS:
            raise AssociationError("log_too_long", f"identity log has more than {MAX_LOG_ACTIONS} actions")
        parsed = [parse_action(a) for a in update.actions]
        if not parsed:
            raise AssociationError("bad_update", "identity update has no actions")
        verifier = SignatureVerifier(update_text(update, [line for _, line in parsed]), scw_verifier)
        # verify every signature before applying anything: a bad signature is `bad_signature`
        # whatever the order of the actions (libxmtp also verifies all before folding)
        checked: list[tuple[Action, list[Verified]]] = []
        for action, _ in parsed:
            if isinstance(action, Create):
                checked.append((action, [verifier.verify(action.signature)]))
            elif isinstance(action, Add):
                checked.append(
                    (action, [verifier.verify(action.new_signature), verifier.verify(action.existing_signature)])
                )
            else:
                checked.append((action, [verifier.verify(action.signature)]))
        for action, sigs in checked:
            if isinstance(action, Create):
                self.create(action, sigs[0])
            elif isinstance(action, Add):
                self.add(action, sigs[0], sigs[1])
            elif isinstance(action, Revoke):
                self.revoke(action, sigs[0])
            else:
                self.change_recovery(action, sigs[0])
        if self.inbox_id != update.inbox_id:
            raise AssociationError("wrong_inbox_id", "update's inbox id does not match the inbox's creation")
        self.seen.update(v.replay_key for _, sigs in checked for v in sigs)
        self.scw = self.scw or verifier.used_scw


@dataclass(frozen=True, slots=True)
class ScwCheck:
    """One smart-contract-wallet signature the fold will ask `scw_verifier` about."""

    account_id: str
    block_number: int
    signature: bytes
    hash: bytes  # EIP-191 hash of the update's signature text


def smart_contract_wallet_checks(entries: Iterable[tuple[int, bytes | pb.IdentityUpdate]]) -> list[ScwCheck]:
    """Every SCW signature in a log, so a caller can ask the node about all of them in one batch
    before folding (signature texts do not depend on the state). Raises AssociationError like the fold."""
    checks: list[ScwCheck] = []
    for _, data in entries:
        update = decode_update(data)
        parsed = [parse_action(a) for a in update.actions]
        digest = eip191_hash(update_text(update, [line for _, line in parsed]).encode())
        for action, _ in parsed:
            signatures = (
                (action.new_signature, action.existing_signature) if isinstance(action, Add) else (action.signature,)
            )
            for sig in signatures:
                if sig.WhichOneof("signature") == "erc_6492":
                    scw = sig.erc_6492
                    check = ScwCheck(scw.account_id, scw.block_number, scw.signature, digest)
                    if check not in checks:
                        checks.append(check)
    return checks


def require_inbox(inbox_id: str, updates: Iterable[pb.IdentityUpdate]) -> None:
    """Every update must name `inbox_id`: a node asked for one inbox's log may answer with another
    inbox's genuine, signed log, which would fold cleanly into that other inbox's members."""
    for update in updates:
        if update.inbox_id != inbox_id:
            raise AssociationError(
                "inbox_id_mismatch", f"asked for inbox {inbox_id}, got an update of {update.inbox_id!r}"
            )


def fold_identity_log(
    entries: Iterable[tuple[int, bytes | pb.IdentityUpdate]],
    scw_verifier: ScwVerifier | None = None,
    previous: AssociationState | None = None,
    inbox_id: str | None = None,
) -> AssociationState:
    """Fold `(sequence_id, IdentityUpdate)` entries (any order; ids must be distinct) into a state.

    With `previous`, only entries newer than `previous.last_sequence_id` may be given. With
    `inbox_id`, every update and the folded state must be of that inbox (`inbox_id_mismatch`,
    checked before any signature). Raises `AssociationError` if any update is invalid, the log is
    empty, or it exceeds MAX_LOG_UPDATES.
    """
    items = sorted(entries, key=lambda e: e[0])
    count = (previous.update_count if previous else 0) + len(items)
    if count > MAX_LOG_UPDATES:
        raise AssociationError("log_too_long", f"identity log has more than {MAX_LOG_UPDATES} updates")
    updates = [(sequence_id, decode_update(data)) for sequence_id, data in items]
    if inbox_id is not None:
        require_inbox(inbox_id, (update for _, update in updates))
        if previous is not None and previous.inbox_id != inbox_id:
            raise AssociationError("inbox_id_mismatch", f"previous state is of inbox {previous.inbox_id}")
    last = previous.last_sequence_id if previous else -1
    fold = _Fold(previous)
    for sequence_id, update in updates:
        if sequence_id <= last:
            raise AssociationError("bad_update", "identity log sequence ids are not increasing")
        last = sequence_id
        fold.apply(update, scw_verifier)
    if not fold.created:
        raise AssociationError("bad_update", "identity log is empty")
    if inbox_id is not None and fold.inbox_id != inbox_id:
        raise AssociationError("inbox_id_mismatch", f"asked for inbox {inbox_id}, the log creates {fold.inbox_id}")
    return AssociationState(
        inbox_id=fold.inbox_id,
        recovery_identifier=fold.recovery,
        members=MappingProxyType(fold.members),
        last_sequence_id=last,
        update_count=count,
        action_count=fold.actions,
        node_trusted_scw=fold.scw,
        seen_signatures=frozenset(fold.seen),
    )


# ---- decentralized (d14n) network: identity updates arrive wrapped in envelopes ------------------

IDENTITY_TOPIC_KIND: Final = 2  # libxmtp TopicKind::IdentityUpdatesV1


def identity_topic(inbox_id: str) -> bytes:
    """The d14n topic of an inbox's identity log: kind byte 2 || the inbox id's 32 bytes."""
    return bytes((IDENTITY_TOPIC_KIND,)) + bytes.fromhex(inbox_id)


@dataclass(frozen=True, slots=True)
class EnvelopeEntry:
    originator_node_id: int
    sequence_id: int
    update: pb.IdentityUpdate


def identity_update_from_envelope(data: bytes | env_pb.OriginatorEnvelope, topic: bytes | None = None) -> EnvelopeEntry:
    """Unwrap OriginatorEnvelope -> UnsignedOriginatorEnvelope -> PayerEnvelope -> ClientEnvelope.

    The node and payer signatures are not checked: they vouch for delivery, not content; the
    update's own signatures are checked by the fold. With `topic`, the client's target topic must match.
    """
    try:
        envelope = data if isinstance(data, env_pb.OriginatorEnvelope) else env_pb.OriginatorEnvelope.FromString(data)
        unsigned = env_pb.UnsignedOriginatorEnvelope.FromString(envelope.unsigned_originator_envelope)
        payer = env_pb.PayerEnvelope.FromString(unsigned.payer_envelope_bytes)
        client = env_pb.ClientEnvelope.FromString(payer.unsigned_client_envelope)
    except DecodeError:
        raise AssociationError("bad_update", "identity envelope does not decode") from None
    if not client.HasField("identity_update"):
        raise AssociationError("bad_update", "envelope does not carry an identity update")
    if topic is not None and client.aad.target_topic != topic:
        raise AssociationError("bad_update", "envelope is for another topic")
    return EnvelopeEntry(unsigned.originator_node_id, unsigned.originator_sequence_id, client.identity_update)
