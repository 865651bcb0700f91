"""Test keys and identity-update builders for XMTP: what an honest libxmtp client would publish.

InstallationKey signs Ed25519ph with context (pycryptodome's RFC 8032 signer, byte-identical to
libxmtp); EthKey signs EIP-191 personal messages (coincurve). The builders return signed
`IdentityUpdate` protobuf messages; `identity_log` numbers them like the node does.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

import coincurve
from Crypto.Hash import SHA512, keccak
from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa
from google.protobuf.message import Message

from atmx.indexer.xmtp.ed25519ph import IDENTITY_UPDATE_CONTEXT
from atmx.indexer.xmtp.proto import association_pb2 as pb
from atmx.indexer.xmtp.proto import message_contents_pb2 as legacy_pb
from atmx.indexer.xmtp.proto import signature_pb2 as sig_pb
from atmx.indexer.xmtp.signatures import eip191_hash, legacy_key_text, signature_text


@dataclass(frozen=True)
class InstallationKey:
    seed: bytes

    @classmethod
    def generate(cls) -> InstallationKey:
        return cls(os.urandom(32))

    @property
    def public(self) -> bytes:
        key = ECC.construct(curve="Ed25519", seed=self.seed)
        return bytes(key.public_key().export_key(format="raw"))

    def sign_ph(self, text: str | bytes, context: bytes) -> bytes:
        message = text.encode() if isinstance(text, str) else text
        key = ECC.construct(curve="Ed25519", seed=self.seed)
        return bytes(eddsa.new(key, "rfc8032", context=context).sign(SHA512.new(message)))

    def member_identifier(self) -> pb.MemberIdentifier:
        return pb.MemberIdentifier(installation_public_key=self.public)

    def signature(self, text: str) -> sig_pb.Signature:
        raw = self.sign_ph(text, IDENTITY_UPDATE_CONTEXT)
        return sig_pb.Signature(installation_key=sig_pb.RecoverableEd25519Signature(bytes=raw, public_key=self.public))


@dataclass(frozen=True)
class EthKey:
    secret: bytes

    @classmethod
    def generate(cls) -> EthKey:
        return cls(coincurve.PrivateKey().secret)

    @property
    def address(self) -> str:
        public = coincurve.PrivateKey(self.secret).public_key.format(compressed=False)[1:]
        return "0x" + keccak.new(data=public, digest_bits=256).digest()[-20:].hex()

    def sign_erc191(self, text: str | bytes) -> bytes:
        """65 bytes r || s || v with v = 27/28, low s (what wallets produce)."""
        message = text.encode() if isinstance(text, str) else text
        rsv = coincurve.PrivateKey(self.secret).sign_recoverable(eip191_hash(message), hasher=None)
        return rsv[:64] + bytes((rsv[64] + 27,))

    def member_identifier(self) -> pb.MemberIdentifier:
        return pb.MemberIdentifier(ethereum_address=self.address)

    def signature(self, text: str) -> sig_pb.Signature:
        return sig_pb.Signature(erc_191=sig_pb.RecoverableEcdsaSignature(bytes=self.sign_erc191(text)))


@dataclass(frozen=True)
class LegacyV2Key:
    """An XMTP v2 identity key signed by `wallet` ("Create Identity"), signing on the wallet's behalf."""

    wallet: EthKey
    secret: bytes
    created_ns: int = 1_600_000_000_000_000_000

    @classmethod
    def generate(cls, wallet: EthKey) -> LegacyV2Key:
        return cls(wallet, coincurve.PrivateKey().secret)

    @property
    def address(self) -> str:
        return self.wallet.address

    def signed_public_key(self) -> legacy_pb.SignedPublicKey:
        unsigned = legacy_pb.UnsignedPublicKey(created_ns=self.created_ns)
        unsigned.secp256k1_uncompressed.bytes = coincurve.PrivateKey(self.secret).public_key.format(compressed=False)
        key_bytes = unsigned.SerializeToString()
        wallet_sig = self.wallet.sign_erc191(legacy_key_text(key_bytes))
        signed = legacy_pb.SignedPublicKey(key_bytes=key_bytes)
        signed.signature.wallet_ecdsa_compact.bytes = wallet_sig[:64]
        signed.signature.wallet_ecdsa_compact.recovery = wallet_sig[64] - 27
        return signed

    def member_identifier(self) -> pb.MemberIdentifier:
        return self.wallet.member_identifier()

    def signature(self, text: str) -> sig_pb.Signature:
        own = EthKey(self.secret).sign_erc191(text)
        delegated = sig_pb.LegacyDelegatedSignature(delegated_key=self.signed_public_key())
        delegated.signature.bytes = own
        return sig_pb.Signature(delegated_erc_191=delegated)


Signer = InstallationKey | EthKey | LegacyV2Key

_PLACEHOLDER = sig_pb.Signature(erc_191=sig_pb.RecoverableEcdsaSignature(bytes=bytes(65)))


def inbox_id(address: str, nonce: int = 0) -> str:
    return hashlib.sha256(f"{address.lower()}{nonce}".encode()).hexdigest()


def now_ns() -> int:
    return time.time_ns()


def _sign(update: pb.IdentityUpdate, fields: list[tuple[Message, str, Signer]]) -> pb.IdentityUpdate:
    # the text covers identifiers only, so it can be built while the signatures are placeholders
    text = signature_text(update)
    for message, name, signer in fields:
        getattr(message, name).CopyFrom(signer.signature(text))
    return update


def create_inbox(
    wallet: EthKey | LegacyV2Key,
    nonce: int = 0,
    installation: InstallationKey | None = None,
    timestamp_ns: int | None = None,
    claimed_inbox_id: str | None = None,
) -> pb.IdentityUpdate:
    """CreateInbox by `wallet`, plus (like libxmtp registration) an AddAssociation of `installation`.

    `claimed_inbox_id` overrides the update's inbox id (signed as such), to forge a wrong one.
    """
    claimed = claimed_inbox_id if claimed_inbox_id is not None else inbox_id(wallet.address, nonce)
    update = pb.IdentityUpdate(inbox_id=claimed, client_timestamp_ns=timestamp_ns or now_ns())
    create = update.actions.add().create_inbox
    create.initial_identifier = wallet.address
    create.nonce = nonce
    create.initial_identifier_kind = pb.IDENTIFIER_KIND_ETHEREUM
    create.initial_identifier_signature.CopyFrom(_PLACEHOLDER)
    fields: list[tuple[Message, str, Signer]] = [(create, "initial_identifier_signature", wallet)]
    if installation is not None:
        fields += _add_action(update, wallet, installation)
    return _sign(update, fields)


def _add_action(update: pb.IdentityUpdate, existing: Signer, new: Signer) -> list[tuple[Message, str, Signer]]:
    add = update.actions.add().add
    add.new_member_identifier.CopyFrom(new.member_identifier())
    add.existing_member_signature.CopyFrom(_PLACEHOLDER)
    add.new_member_signature.CopyFrom(_PLACEHOLDER)
    return [(add, "existing_member_signature", existing), (add, "new_member_signature", new)]


def add_member(inbox: str, existing: Signer, new: Signer, timestamp_ns: int | None = None) -> pb.IdentityUpdate:
    """AddAssociation of `new` (installation or wallet), authorised by `existing`."""
    update = pb.IdentityUpdate(inbox_id=inbox, client_timestamp_ns=timestamp_ns or now_ns())
    return _sign(update, _add_action(update, existing, new))


def add_installation(
    inbox: str, existing: Signer, installation: InstallationKey, timestamp_ns: int | None = None
) -> pb.IdentityUpdate:
    return add_member(inbox, existing, installation, timestamp_ns)


def revoke(
    inbox: str, recovery: Signer, member: pb.MemberIdentifier | Signer, timestamp_ns: int | None = None
) -> pb.IdentityUpdate:
    """RevokeAssociation of `member`, signed by `recovery`."""
    target = member if isinstance(member, pb.MemberIdentifier) else member.member_identifier()
    update = pb.IdentityUpdate(inbox_id=inbox, client_timestamp_ns=timestamp_ns or now_ns())
    action = update.actions.add().revoke
    action.member_to_revoke.CopyFrom(target)
    action.recovery_identifier_signature.CopyFrom(_PLACEHOLDER)
    return _sign(update, [(action, "recovery_identifier_signature", recovery)])


def change_recovery(
    inbox: str, recovery: Signer, new_recovery: EthKey, timestamp_ns: int | None = None
) -> pb.IdentityUpdate:
    update = pb.IdentityUpdate(inbox_id=inbox, client_timestamp_ns=timestamp_ns or now_ns())
    action = update.actions.add().change_recovery_address
    action.new_recovery_identifier = new_recovery.address
    action.new_recovery_identifier_kind = pb.IDENTIFIER_KIND_ETHEREUM
    action.existing_recovery_identifier_signature.CopyFrom(_PLACEHOLDER)
    return _sign(update, [(action, "existing_recovery_identifier_signature", recovery)])


def identity_log(*updates: pb.IdentityUpdate, first_sequence_id: int = 1) -> list[tuple[int, bytes]]:
    """(sequence_id, serialized update) pairs, as GetIdentityUpdates returns them."""
    return [(first_sequence_id + i, u.SerializeToString()) for i, u in enumerate(updates)]
