"""XMTP identity updates: identifiers, the text every signature signs, and signature checks; pure.

Mirrors libxmtp `crates/xmtp_id/src/associations` (v1.10.0) below the fold: an update's actions are
parsed into `Action`s, `signature_text` rebuilds the text libxmtp signs, and `SignatureVerifier`
checks one signature of any kind (ERC-191 with address recovery, installation-key Ed25519ph,
passkeys, legacy delegated keys, and smart-contract wallets through a caller's `ScwVerifier`).
Who may sign what is the fold's business (`association.py`). Replay keys are canonical (ECDSA
r || low-s || parity, P-256 r || low-s), as libxmtp HEAD does, so a re-encoded copy of a seen
signature is a replay too.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
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
from atmx.indexer.xmtp.proto import message_contents_pb2 as legacy_pb
from atmx.indexer.xmtp.proto import signature_pb2 as sig_pb

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
class Verified:
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
class Create:
    identifier: MemberId
    nonce: int
    signature: sig_pb.Signature


@dataclass(frozen=True, slots=True)
class Add:
    new_member: MemberId
    existing_signature: sig_pb.Signature
    new_signature: sig_pb.Signature


@dataclass(frozen=True, slots=True)
class Revoke:
    member: MemberId
    signature: sig_pb.Signature


@dataclass(frozen=True, slots=True)
class ChangeRecovery:
    new_recovery: MemberId
    signature: sig_pb.Signature


Action = Create | Add | Revoke | ChangeRecovery


def _signature_field(parent: Message, name: str) -> sig_pb.Signature:
    if not parent.HasField(name):
        raise AssociationError("bad_update", f"missing {name}")
    value: sig_pb.Signature = getattr(parent, name)
    if value.WhichOneof("signature") is None:
        raise AssociationError("bad_update", f"empty {name}")
    return value


def parse_action(action: pb.IdentityAction) -> tuple[Action, str]:
    which = action.WhichOneof("kind")
    if which == "create_inbox":
        c = action.create_inbox
        create = Create(
            _identifier(c.initial_identifier, c.initial_identifier_kind),
            c.nonce,
            _signature_field(c, "initial_identifier_signature"),
        )
        return create, f"- Create inbox\n  (Owner: {create.identifier})"
    if which == "add":
        a = action.add
        if not a.HasField("new_member_identifier"):
            raise AssociationError("bad_update", "missing new_member_identifier")
        add = Add(
            _member_identifier(a.new_member_identifier),
            _signature_field(a, "existing_member_signature"),
            _signature_field(a, "new_member_signature"),
        )
        return add, _line(_ADD_TEXT, add.new_member)
    if which == "revoke":
        r = action.revoke
        if not r.HasField("member_to_revoke"):
            raise AssociationError("bad_update", "missing member_to_revoke")
        revoke = Revoke(_member_identifier(r.member_to_revoke), _signature_field(r, "recovery_identifier_signature"))
        return revoke, _line(_REVOKE_TEXT, revoke.member)
    if which == "change_recovery_address":
        ch = action.change_recovery_address
        change = ChangeRecovery(
            _identifier(ch.new_recovery_identifier, ch.new_recovery_identifier_kind),
            _signature_field(ch, "existing_recovery_identifier_signature"),
        )
        return change, f"- Change inbox recovery address\n  (Address: {change.new_recovery})"
    raise AssociationError("bad_update", "identity action is empty")


def signature_text(update: pb.IdentityUpdate) -> str:
    """The text every signature of `update` signs (libxmtp `UnsignedIdentityUpdate::signature_text`)."""
    return update_text(update, [parse_action(a)[1] for a in update.actions])


def update_text(update: pb.IdentityUpdate, lines: list[str]) -> str:
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


def _verify_passkey(text: str, sig: sig_pb.RecoverablePasskeySignature) -> Verified:
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
    return Verified(MemberId(MemberKind.PASSKEY, sig.public_key), "p256", replay, None)


def _parse_account_id(account_id: str) -> tuple[MemberId, int]:
    # CAIP-10 "eip155:<chain id>:<address>"; the chain id must be canonical decimal
    parts = account_id.split(":")
    if len(parts) != 3 or parts[0] != "eip155":
        raise AssociationError("bad_update", f"unsupported account id {account_id!r}")
    chain = parts[1]
    if not chain.isascii() or not chain.isdigit() or str(int(chain)) != chain or int(chain) >= 1 << 64:
        raise AssociationError("bad_update", f"invalid chain id in {account_id!r}")
    return eth_address(parts[2]), int(chain)


class SignatureVerifier:
    def __init__(self, text: str, scw_verifier: ScwVerifier | None) -> None:
        self.text = text
        self.text_bytes = text.encode()
        self.scw_verifier = scw_verifier
        self.used_scw = False

    def verify(self, signature: sig_pb.Signature) -> Verified:
        which = signature.WhichOneof("signature")
        if which == "erc_191":
            signer, replay = recover_erc191(self.text_bytes, signature.erc_191.bytes)
            return Verified(signer, "erc191", replay, None)
        if which == "installation_key":
            ik = signature.installation_key
            if not verify_ed25519ph(ik.public_key, self.text_bytes, ik.bytes, IDENTITY_UPDATE_CONTEXT):
                raise AssociationError("bad_signature", "installation key signature does not verify")
            return Verified(MemberId(MemberKind.INSTALLATION, ik.public_key), "installation_key", ik.bytes, None)
        if which == "passkey":
            return _verify_passkey(self.text, signature.passkey)
        if which == "erc_6492":
            return self._verify_scw(signature.erc_6492)
        if which == "delegated_erc_191":
            return self._verify_legacy(signature.delegated_erc_191)
        raise AssociationError("bad_update", "signature is empty")

    def _verify_legacy(self, sig: sig_pb.LegacyDelegatedSignature) -> Verified:
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
        return Verified(wallet, "legacy", replay, None)

    def _verify_scw(self, sig: sig_pb.SmartContractWalletSignature) -> Verified:
        signer, chain_id = _parse_account_id(sig.account_id)
        if self.scw_verifier is None:
            raise AssociationError("scw_unverifiable", "no smart-contract-wallet verifier configured")
        valid = self.scw_verifier(sig.account_id, sig.block_number, sig.signature, eip191_hash(self.text_bytes))
        if valid is None:
            raise AssociationError("scw_unverifiable", "smart-contract-wallet signature could not be checked")
        if not valid:
            raise AssociationError("bad_signature", "smart-contract-wallet signature is invalid")
        self.used_scw = True
        return Verified(signer, "erc1271", sig.signature, chain_id)


def decode_update(data: bytes | pb.IdentityUpdate) -> pb.IdentityUpdate:
    if isinstance(data, pb.IdentityUpdate):
        return data
    try:
        return pb.IdentityUpdate.FromString(data)
    except DecodeError:
        raise AssociationError("bad_update", "identity update does not decode") from None
