"""XMTP identity log -> association state (inbox members and installation keys); pure.

Mirrors libxmtp `crates/xmtp_id/src/associations` (v1.10.0): every update's signatures are checked
against the update's signature text, the actions are applied in order, and any failure makes the
whole log invalid (libxmtp `get_state` does the same; the node validated each update on publish, so
a failure means forged or corrupted data). One deliberate difference, which only refuses more:
replay keys are canonical (ECDSA r || low-s || parity, P-256 r || low-s), as libxmtp HEAD does, so
a re-encoded copy of a seen signature is a replay too.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from types import MappingProxyType
from typing import Final

import coincurve
from Crypto.Hash import keccak
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from google.protobuf.message import DecodeError, Message

from atmx.indexer.xmtp.ed25519ph import IDENTITY_UPDATE_CONTEXT, verify_ed25519ph
from atmx.indexer.xmtp.proto import association_pb2 as pb
from atmx.indexer.xmtp.proto import envelopes_pb2 as env_pb
from atmx.indexer.xmtp.proto import message_contents_pb2 as legacy_pb
from atmx.indexer.xmtp.proto import signature_pb2 as sig_pb

MAX_LOG_UPDATES: Final = 256  # node-go caps an inbox log at 256 updates
MAX_LOG_ACTIONS: Final = 4096  # bounds the signature work a log can ask for (about 4 s worst case)

_SECP256K1_N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_P256_N: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_HEX: Final = frozenset("0123456789abcdef")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

# scw_verifier(account_id, block_number, signature, hash) -> valid?, or None when it could not ask
ScwVerifier = Callable[[str, int, bytes, bytes], "bool | None"]


class AssociationError(ValueError):
    """The identity log is invalid (or could not be checked); `reason` is a stable snake_case label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class MemberKind(Enum):
    ETHEREUM = "ethereum"
    INSTALLATION = "installation"
    PASSKEY = "passkey"


@dataclass(frozen=True, slots=True)
class MemberId:
    """A member identifier. `key`: 20 address bytes, 32-byte installation key, or passkey key bytes.

    Passkeys are identified by key alone; the relying party is display data (as in libxmtp).
    """

    kind: MemberKind
    key: bytes

    def __str__(self) -> str:
        # libxmtp Display: lowercase 0x address, or plain hex of the key bytes
        if self.kind is MemberKind.ETHEREUM:
            return "0x" + self.key.hex()
        return self.key.hex()


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


@dataclass(frozen=True, slots=True)
class _Verified:
    signer: MemberId
    kind: str  # erc191 | erc1271 | installation_key | p256 | legacy
    replay_key: bytes
    chain_id: int | None


# ---- identifiers and text --------------------------------------------------------------------


def eth_address(text: str) -> MemberId:
    """libxmtp `sanitize_evm_addresses`: 0x + 40 hex digits, any case, stored lowercase."""
    lowered = text.lower()
    if len(lowered) != 42 or not lowered.startswith("0x") or not set(lowered[2:]) <= _HEX:
        raise AssociationError("bad_update", f"invalid ethereum address {text!r}")
    return MemberId(MemberKind.ETHEREUM, bytes.fromhex(lowered[2:]))


def _identifier(text: str, kind: int) -> MemberId:
    if kind in (pb.IDENTIFIER_KIND_UNSPECIFIED, pb.IDENTIFIER_KIND_ETHEREUM):
        return eth_address(text)
    if kind == pb.IDENTIFIER_KIND_PASSKEY:
        # Rust hex::decode: an even number of hex digits, nothing else (bytes.fromhex skips spaces)
        if len(text) % 2 or not set(text.lower()) <= _HEX:
            raise AssociationError("bad_update", "passkey identifier is not hex")
        return MemberId(MemberKind.PASSKEY, bytes.fromhex(text))
    raise AssociationError("bad_update", f"unknown identifier kind {kind}")


def _member_identifier(proto: pb.MemberIdentifier) -> MemberId:
    which = proto.WhichOneof("kind")
    if which == "ethereum_address":
        return eth_address(proto.ethereum_address)
    if which == "installation_public_key":
        return MemberId(MemberKind.INSTALLATION, proto.installation_public_key)
    if which == "passkey":
        return MemberId(MemberKind.PASSKEY, proto.passkey.key)
    raise AssociationError("bad_update", "member identifier is empty")


def inbox_id_for(identifier: MemberId, nonce: int) -> str:
    """libxmtp `Identifier::inbox_id`: lowercase hex SHA-256 of display(identifier) || decimal nonce."""
    return hashlib.sha256(f"{identifier}{nonce}".encode()).hexdigest()


def _pretty_timestamp(ns: int) -> str:
    # chrono DateTime::from_timestamp_nanos(ns as i64), RFC 3339 with whole seconds and "Z"
    signed = ns - (1 << 64) if ns >= (1 << 63) else ns
    moment = _EPOCH + timedelta(seconds=signed // 1_000_000_000)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


_ADD_TEXT: Final = {
    MemberKind.INSTALLATION: ("Grant messaging access to app", "ID"),
    MemberKind.ETHEREUM: ("Link address to inbox", "Address"),
    MemberKind.PASSKEY: ("Link passkey to inbox", "Passkey"),
}
_REVOKE_TEXT: Final = {
    MemberKind.INSTALLATION: ("Revoke messaging access from app", "ID"),
    MemberKind.ETHEREUM: ("Unlink address from inbox", "Address"),
    MemberKind.PASSKEY: ("Unlink passkey from inbox", "Passkey"),
}


def _line(table: dict[MemberKind, tuple[str, str]], member: MemberId) -> str:
    prefix, label = table[member.kind]
    return f"- {prefix}\n  ({label}: {member})"


# ---- parsed actions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Create:
    identifier: MemberId
    nonce: int
    signature: sig_pb.Signature


@dataclass(frozen=True, slots=True)
class _Add:
    new_member: MemberId
    existing_signature: sig_pb.Signature
    new_signature: sig_pb.Signature


@dataclass(frozen=True, slots=True)
class _Revoke:
    member: MemberId
    signature: sig_pb.Signature


@dataclass(frozen=True, slots=True)
class _ChangeRecovery:
    new_recovery: MemberId
    signature: sig_pb.Signature


_Action = _Create | _Add | _Revoke | _ChangeRecovery


def _signature_field(parent: Message, name: str) -> sig_pb.Signature:
    if not parent.HasField(name):
        raise AssociationError("bad_update", f"missing {name}")
    value: sig_pb.Signature = getattr(parent, name)
    if value.WhichOneof("signature") is None:
        raise AssociationError("bad_update", f"empty {name}")
    return value


def _parse_action(action: pb.IdentityAction) -> tuple[_Action, str]:
    which = action.WhichOneof("kind")
    if which == "create_inbox":
        c = action.create_inbox
        create = _Create(
            _identifier(c.initial_identifier, c.initial_identifier_kind),
            c.nonce,
            _signature_field(c, "initial_identifier_signature"),
        )
        return create, f"- Create inbox\n  (Owner: {create.identifier})"
    if which == "add":
        a = action.add
        if not a.HasField("new_member_identifier"):
            raise AssociationError("bad_update", "missing new_member_identifier")
        add = _Add(
            _member_identifier(a.new_member_identifier),
            _signature_field(a, "existing_member_signature"),
            _signature_field(a, "new_member_signature"),
        )
        return add, _line(_ADD_TEXT, add.new_member)
    if which == "revoke":
        r = action.revoke
        if not r.HasField("member_to_revoke"):
            raise AssociationError("bad_update", "missing member_to_revoke")
        revoke = _Revoke(_member_identifier(r.member_to_revoke), _signature_field(r, "recovery_identifier_signature"))
        return revoke, _line(_REVOKE_TEXT, revoke.member)
    if which == "change_recovery_address":
        ch = action.change_recovery_address
        change = _ChangeRecovery(
            _identifier(ch.new_recovery_identifier, ch.new_recovery_identifier_kind),
            _signature_field(ch, "existing_recovery_identifier_signature"),
        )
        return change, f"- Change inbox recovery address\n  (Address: {change.new_recovery})"
    raise AssociationError("bad_update", "identity action is empty")


def signature_text(update: pb.IdentityUpdate) -> str:
    """The text every signature of `update` signs (libxmtp `UnsignedIdentityUpdate::signature_text`)."""
    return _text(update, [_parse_action(a)[1] for a in update.actions])


def _text(update: pb.IdentityUpdate, lines: list[str]) -> str:
    return (
        f"XMTP : Authenticate to inbox\n\nInbox ID: {update.inbox_id}\n"
        f"Current time: {_pretty_timestamp(update.client_timestamp_ns)}\n\n"
        + "\n".join(lines)
        + "\n\nFor more info: https://xmtp.org/signatures"
    )


# ---- signatures -------------------------------------------------------------------------------


def _keccak(data: bytes) -> bytes:
    return keccak.new(data=data, digest_bits=256).digest()


def eip191_hash(text: bytes) -> bytes:
    return _keccak(b"\x19Ethereum Signed Message:\n" + str(len(text)).encode() + text)


def _parity(v: int) -> int | None:
    # alloy normalize_v: 0/1, 27/28, or an EIP-155 style v >= 35
    if v in (0, 1):
        return v
    if v in (27, 28):
        return v - 27
    if v >= 35:
        return (v - 35) % 2
    return None


def recover_erc191(text: bytes, signature: bytes) -> tuple[MemberId, bytes]:
    """(signer address, replay key) of a 65-byte r||s||v personal_sign signature.

    High s is replaced by n - s WITHOUT flipping the parity (libxmtp `to_lower_s`), so a high-s
    signature recovers some other address and fails the signer checks, as in libxmtp.
    """
    if len(signature) != 65:
        raise AssociationError("bad_signature", "ecdsa signature must be 65 bytes")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    parity = _parity(signature[64])
    if parity is None or not (0 < r < _SECP256K1_N and 0 < s < _SECP256K1_N):
        raise AssociationError("bad_signature", "malformed ecdsa signature")
    if s > _SECP256K1_N // 2:
        s = _SECP256K1_N - s
    rs = signature[:32] + s.to_bytes(32, "big")
    try:
        key = coincurve.PublicKey.from_signature_and_message(rs + bytes((parity,)), eip191_hash(text), hasher=None)
    except Exception:  # coincurve raises plain Exception when no key recovers
        raise AssociationError("bad_signature", "ecdsa signature recovers no key") from None
    address = _keccak(key.format(compressed=False)[1:])[-20:]
    return MemberId(MemberKind.ETHEREUM, address), rs + bytes((parity,))


def legacy_key_text(key_bytes: bytes) -> bytes:
    """What a wallet signed to create an XMTP v2 identity key ("Create Identity")."""
    return f"XMTP : Create Identity\n{key_bytes.hex()}\n\nFor more info: https://xmtp.org/signatures/".encode()


def _verify_passkey(text: str, sig: sig_pb.RecoverablePasskeySignature) -> _Verified:
    try:
        client_data = json.loads(sig.client_data_json)
        challenge, origin = client_data["challenge"], client_data["origin"]
    except (ValueError, TypeError, KeyError):
        raise AssociationError("bad_signature", "passkey client data is not valid JSON") from None
    if not isinstance(challenge, str) or not isinstance(origin, str):
        raise AssociationError("bad_signature", "passkey client data lacks challenge/origin")
    if challenge != base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode():
        raise AssociationError("bad_signature", "passkey challenge is not the signature text")
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), sig.public_key)
        r, s = decode_dss_signature(sig.signature)
        signed = sig.authenticator_data + hashlib.sha256(sig.client_data_json).digest()
        key.verify(sig.signature, signed, ec.ECDSA(hashes.SHA256()))
    except (ValueError, InvalidSignature):
        raise AssociationError("bad_signature", "passkey signature does not verify") from None
    low_s = min(s, _P256_N - s)
    replay = r.to_bytes(32, "big") + low_s.to_bytes(32, "big")
    return _Verified(MemberId(MemberKind.PASSKEY, sig.public_key), "p256", replay, None)


def _parse_account_id(account_id: str) -> tuple[MemberId, int]:
    # CAIP-10 "eip155:<chain id>:<address>"; the chain id must be canonical decimal
    parts = account_id.split(":")
    if len(parts) != 3 or parts[0] != "eip155":
        raise AssociationError("bad_update", f"unsupported account id {account_id!r}")
    chain = parts[1]
    if not chain.isascii() or not chain.isdigit() or str(int(chain)) != chain or int(chain) >= 1 << 64:
        raise AssociationError("bad_update", f"invalid chain id in {account_id!r}")
    return eth_address(parts[2]), int(chain)


class _Verifier:
    def __init__(self, text: str, scw_verifier: ScwVerifier | None) -> None:
        self.text = text
        self.text_bytes = text.encode()
        self.scw_verifier = scw_verifier
        self.used_scw = False

    def verify(self, signature: sig_pb.Signature) -> _Verified:
        which = signature.WhichOneof("signature")
        if which == "erc_191":
            signer, replay = recover_erc191(self.text_bytes, signature.erc_191.bytes)
            return _Verified(signer, "erc191", replay, None)
        if which == "installation_key":
            ik = signature.installation_key
            if not verify_ed25519ph(ik.public_key, self.text_bytes, ik.bytes, IDENTITY_UPDATE_CONTEXT):
                raise AssociationError("bad_signature", "installation key signature does not verify")
            return _Verified(MemberId(MemberKind.INSTALLATION, ik.public_key), "installation_key", ik.bytes, None)
        if which == "passkey":
            return _verify_passkey(self.text, signature.passkey)
        if which == "erc_6492":
            return self._verify_scw(signature.erc_6492)
        if which == "delegated_erc_191":
            return self._verify_legacy(signature.delegated_erc_191)
        raise AssociationError("bad_update", "signature is empty")

    def _verify_legacy(self, sig: sig_pb.LegacyDelegatedSignature) -> _Verified:
        """XMTP v2 identity key, signed by the wallet, signing on the wallet's behalf (libxmtp
        `from_legacy_delegated`): the key's own ERC-191 signature over the text must recover the
        key's address; the signer is the wallet that signed the key."""
        if not sig.HasField("delegated_key") or not sig.HasField("signature"):
            raise AssociationError("bad_update", "legacy delegated signature is incomplete")
        key_signer, _ = recover_erc191(self.text_bytes, sig.signature.bytes)
        signed_key = sig.delegated_key
        union = signed_key.signature.WhichOneof("union")
        if union is None:
            raise AssociationError("bad_signature", "legacy key carries no wallet signature")
        compact = getattr(signed_key.signature, union)
        wallet_sig = compact.bytes + bytes((compact.recovery & 0xFF,))
        wallet, replay = recover_erc191(legacy_key_text(signed_key.key_bytes), wallet_sig)
        try:
            unsigned = legacy_pb.UnsignedPublicKey.FromString(signed_key.key_bytes)
        except DecodeError:
            raise AssociationError("bad_signature", "legacy key does not decode") from None
        if not unsigned.HasField("secp256k1_uncompressed"):
            raise AssociationError("bad_signature", "legacy key is not secp256k1")
        try:
            point = coincurve.PublicKey(unsigned.secp256k1_uncompressed.bytes).format(compressed=False)
        except ValueError:
            raise AssociationError("bad_signature", "legacy key is not a valid point") from None
        if _keccak(point[1:])[-20:] != key_signer.key:
            raise AssociationError("bad_signature", "legacy key signature is not by the legacy key")
        return _Verified(wallet, "legacy", replay, None)

    def _verify_scw(self, sig: sig_pb.SmartContractWalletSignature) -> _Verified:
        signer, chain_id = _parse_account_id(sig.account_id)
        if self.scw_verifier is None:
            raise AssociationError("scw_unverifiable", "no smart-contract-wallet verifier configured")
        valid = self.scw_verifier(sig.account_id, sig.block_number, sig.signature, eip191_hash(self.text_bytes))
        if valid is None:
            raise AssociationError("scw_unverifiable", "smart-contract-wallet signature could not be checked")
        if not valid:
            raise AssociationError("bad_signature", "smart-contract-wallet signature is invalid")
        self.used_scw = True
        return _Verified(signer, "erc1271", sig.signature, chain_id)


# ---- the fold ---------------------------------------------------------------------------------

_ALLOWED: Final = {
    MemberKind.ETHEREUM: frozenset({"erc191", "erc1271", "legacy"}),
    MemberKind.INSTALLATION: frozenset({"installation_key"}),
    MemberKind.PASSKEY: frozenset({"p256"}),
}


def _require_allowed(kind: MemberKind, verified: _Verified) -> None:
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

    def _replay_check(self, *signatures: _Verified) -> None:
        for verified in signatures:
            if verified.replay_key in self.seen:
                raise AssociationError("replayed_signature", "signature was already used in this inbox log")

    def _chain_check(self, verified: _Verified) -> None:
        member = self.members.get(verified.signer)
        if member is not None and member.chain_id != verified.chain_id:
            raise AssociationError("unauthorized", "smart-contract-wallet signature from another chain")

    def _require_created(self) -> None:
        if not self.created:
            raise AssociationError("bad_update", "inbox log does not start with CreateInbox")

    def create(self, action: _Create, verified: _Verified) -> None:
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

    def add(self, action: _Add, new: _Verified, existing: _Verified) -> None:
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

    def revoke(self, action: _Revoke, verified: _Verified) -> None:
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

    def change_recovery(self, action: _ChangeRecovery, verified: _Verified) -> None:
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
        parsed = [_parse_action(a) for a in update.actions]
        if not parsed:
            raise AssociationError("bad_update", "identity update has no actions")
        verifier = _Verifier(_text(update, [line for _, line in parsed]), scw_verifier)
        # verify every signature before applying anything: a bad signature is `bad_signature`
        # whatever the order of the actions (libxmtp also verifies all before folding)
        checked: list[tuple[_Action, list[_Verified]]] = []
        for action, _ in parsed:
            if isinstance(action, _Create):
                checked.append((action, [verifier.verify(action.signature)]))
            elif isinstance(action, _Add):
                checked.append(
                    (action, [verifier.verify(action.new_signature), verifier.verify(action.existing_signature)])
                )
            else:
                checked.append((action, [verifier.verify(action.signature)]))
        for action, sigs in checked:
            if isinstance(action, _Create):
                self.create(action, sigs[0])
            elif isinstance(action, _Add):
                self.add(action, sigs[0], sigs[1])
            elif isinstance(action, _Revoke):
                self.revoke(action, sigs[0])
            else:
                self.change_recovery(action, sigs[0])
        if self.inbox_id != update.inbox_id:
            raise AssociationError("wrong_inbox_id", "update's inbox id does not match the inbox's creation")
        self.seen.update(v.replay_key for _, sigs in checked for v in sigs)
        self.scw = self.scw or verifier.used_scw


def decode_update(data: bytes | pb.IdentityUpdate) -> pb.IdentityUpdate:
    if isinstance(data, pb.IdentityUpdate):
        return data
    try:
        return pb.IdentityUpdate.FromString(data)
    except DecodeError:
        raise AssociationError("bad_update", "identity update does not decode") from None


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
        parsed = [_parse_action(a) for a in update.actions]
        digest = eip191_hash(_text(update, [line for _, line in parsed]).encode())
        for action, _ in parsed:
            signatures = (
                (action.new_signature, action.existing_signature) if isinstance(action, _Add) else (action.signature,)
            )
            for sig in signatures:
                if sig.WhichOneof("signature") == "erc_6492":
                    scw = sig.erc_6492
                    check = ScwCheck(scw.account_id, scw.block_number, scw.signature, digest)
                    if check not in checks:
                        checks.append(check)
    return checks


def fold_identity_log(
    entries: Iterable[tuple[int, bytes | pb.IdentityUpdate]],
    scw_verifier: ScwVerifier | None = None,
    previous: AssociationState | None = None,
) -> AssociationState:
    """Fold `(sequence_id, IdentityUpdate)` entries (any order; ids must be distinct) into a state.

    With `previous`, only entries newer than `previous.last_sequence_id` may be given. Raises
    `AssociationError` if any update is invalid, the log is empty, or it exceeds MAX_LOG_UPDATES.
    """
    items = sorted(entries, key=lambda e: e[0])
    count = (previous.update_count if previous else 0) + len(items)
    if count > MAX_LOG_UPDATES:
        raise AssociationError("log_too_long", f"identity log has more than {MAX_LOG_UPDATES} updates")
    last = previous.last_sequence_id if previous else -1
    fold = _Fold(previous)
    for sequence_id, data in items:
        if sequence_id <= last:
            raise AssociationError("bad_update", "identity log sequence ids are not increasing")
        last = sequence_id
        fold.apply(decode_update(data), scw_verifier)
    if not fold.created:
        raise AssociationError("bad_update", "identity log is empty")
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
