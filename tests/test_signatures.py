"""Signature texts and signature checks of XMTP identity updates, against libxmtp's own output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from xmtp_keys import EthKey

from atmx.indexer.xmtp.proto import association_pb2 as pb
from atmx.indexer.xmtp.proto import identity_api_pb2 as api
from atmx.indexer.xmtp.proto import signature_pb2 as sig_pb
from atmx.indexer.xmtp.signatures import (
    AssociationError,
    eth_address,
    inbox_id_for,
    recover_erc191,
    signature_text,
)

VECTORS: dict[str, Any] = json.loads((Path(__file__).parent / "fixtures" / "xmtp-vectors.json").read_text())
CAPTURED = VECTORS["identity_update"]
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def captured_update() -> pb.IdentityUpdate:
    request = api.PublishIdentityUpdateRequest.FromString(
        bytes.fromhex(CAPTURED["publish_identity_update_request_hex"])
    )
    return request.identity_update


def test_captured_update_signature_text_is_byte_identical() -> None:
    assert signature_text(captured_update()) == CAPTURED["signature_text"]


def test_captured_wallet_signature_recovers_account() -> None:
    signer, _ = recover_erc191(
        CAPTURED["signature_text"].encode(), bytes.fromhex(CAPTURED["wallet_erc191_signature_hex"])
    )
    assert str(signer) == CAPTURED["account_address"]
    assert EthKey(bytes.fromhex(CAPTURED["eth_private_key_hex"])).address == CAPTURED["account_address"]


@pytest.mark.parametrize("vector", VECTORS["inbox_id_vectors"])
def test_inbox_id_vectors(vector: dict[str, Any]) -> None:
    assert inbox_id_for(eth_address(vector["identifier"]), vector["nonce"]) == vector["inbox_id"]


def test_signature_text_matches_libxmtp_unit_test() -> None:
    # libxmtp unsigned_actions.rs `create_signatures`: every action kind, timestamp 12 ns
    placeholder = sig_pb.Signature(erc_191=sig_pb.RecoverableEcdsaSignature(bytes=bytes(65)))
    owner, other, recovery = (
        "0x1234567890abcdef1234567890abcdef12345678",
        "0x4567890abcdef1234567890abcdef12345678123",
        "0x7890abcdef1234567890abcdef12345678123456",
    )
    update = pb.IdentityUpdate(inbox_id=inbox_id_for(eth_address(owner), 0), client_timestamp_ns=12)
    create = update.actions.add().create_inbox
    create.initial_identifier = owner
    create.initial_identifier_signature.CopyFrom(placeholder)
    for member in (pb.MemberIdentifier(ethereum_address=other), pb.MemberIdentifier(installation_public_key=b"\1\2\3")):
        add = update.actions.add().add
        add.new_member_identifier.CopyFrom(member)
        add.existing_member_signature.CopyFrom(placeholder)
        add.new_member_signature.CopyFrom(placeholder)
    for member in (pb.MemberIdentifier(ethereum_address=other), pb.MemberIdentifier(installation_public_key=b"\1\2\3")):
        rev = update.actions.add().revoke
        rev.member_to_revoke.CopyFrom(member)
        rev.recovery_identifier_signature.CopyFrom(placeholder)
    change = update.actions.add().change_recovery_address
    change.new_recovery_identifier = recovery
    change.existing_recovery_identifier_signature.CopyFrom(placeholder)
    assert signature_text(update) == (
        "XMTP : Authenticate to inbox\n\n"
        "Inbox ID: fcd18d86276d7a99fe522dba9660c420f03c8648785ada7c5daae232a3df77a9\n"
        "Current time: 1970-01-01T00:00:00Z\n\n"
        "- Create inbox\n  (Owner: 0x1234567890abcdef1234567890abcdef12345678)\n"
        "- Link address to inbox\n  (Address: 0x4567890abcdef1234567890abcdef12345678123)\n"
        "- Grant messaging access to app\n  (ID: 010203)\n"
        "- Unlink address from inbox\n  (Address: 0x4567890abcdef1234567890abcdef12345678123)\n"
        "- Revoke messaging access from app\n  (ID: 010203)\n"
        "- Change inbox recovery address\n  (Address: 0x7890abcdef1234567890abcdef12345678123456)\n\n"
        "For more info: https://xmtp.org/signatures"
    )


def test_high_s_is_normalised_without_flipping_v() -> None:
    wallet = EthKey.generate()
    text = b"some text"
    sig = wallet.sign_erc191(text)
    s = int.from_bytes(sig[32:64], "big")
    high = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big")
    same_v, flipped_v = high + sig[64:], high + bytes([55 - sig[64]])  # 27 <-> 28
    signer, replay = recover_erc191(text, sig)
    assert str(signer) == wallet.address
    # libxmtp to_lower_s maps n-s back to s and keeps v: the same-v alias recovers the wallet,
    # the correctly-flipped high-s form recovers some other address
    assert recover_erc191(text, same_v) == (signer, replay)
    assert str(recover_erc191(text, flipped_v)[0]) != wallet.address
    for bad in (sig[:64], sig + b"\x00", sig[:64] + b"\x02", sig[:64] + b"\x1d", bytes(32) + sig[32:]):
        with pytest.raises(AssociationError):
            recover_erc191(text, bad)
