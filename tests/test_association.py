"""Identity-log fold: the real libxmtp update, honest logs built with real keys, and forgeries."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import xmtp_keys as keys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from xmtp_keys import EthKey, InstallationKey, LegacyV2Key

from atmx.indexer.xmtp.association import (
    MAX_LOG_ACTIONS,
    MAX_LOG_UPDATES,
    AssociationError,
    MemberId,
    MemberKind,
    ScwCheck,
    eip191_hash,
    eth_address,
    fold_identity_log,
    identity_topic,
    identity_update_from_envelope,
    inbox_id_for,
    signature_text,
    smart_contract_wallet_checks,
)
from atmx.indexer.xmtp.proto import association_pb2 as pb
from atmx.indexer.xmtp.proto import envelopes_pb2 as env_pb
from atmx.indexer.xmtp.proto import identity_api_pb2 as api
from atmx.indexer.xmtp.proto import signature_pb2 as sig_pb

VECTORS: dict[str, Any] = json.loads((Path(__file__).parent / "fixtures" / "xmtp-vectors.json").read_text())
CAPTURED = VECTORS["identity_update"]
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def captured_update() -> pb.IdentityUpdate:
    request = api.PublishIdentityUpdateRequest.FromString(
        bytes.fromhex(CAPTURED["publish_identity_update_request_hex"])
    )
    return request.identity_update


def rejected(entries: Iterable[tuple[int, bytes | pb.IdentityUpdate]], reason: str, **kwargs: Any) -> None:
    with pytest.raises(AssociationError) as info:
        fold_identity_log(entries, **kwargs)
    assert info.value.reason == reason, info.value


def wallet_inbox() -> tuple[EthKey, InstallationKey, pb.IdentityUpdate]:
    wallet, installation = EthKey.generate(), InstallationKey.generate()
    return wallet, installation, keys.create_inbox(wallet, installation=installation)


# --- libxmtp's own output ----------------------------------------------------------------------


def test_captured_update_folds_to_expected_state() -> None:
    state = fold_identity_log([(1, captured_update().SerializeToString())])
    expected = CAPTURED["expected_state"]
    assert state.inbox_id == CAPTURED["inbox_id"]
    assert str(state.recovery_identifier) == expected["recovery_identifier"]
    assert state.installations == frozenset(bytes.fromhex(k) for k in expected["installations"])
    eth = sorted(str(m) for m in state.members if m.kind is MemberKind.ETHEREUM)
    assert eth == expected["members_eth"]
    assert state.last_sequence_id == 1 and state.update_count == 1 and not state.node_trusted_scw


# --- honest logs -------------------------------------------------------------------------------


def test_add_and_revoke_installations() -> None:
    wallet, first, create = wallet_inbox()
    second = InstallationKey.generate()
    inbox = create.inbox_id
    state = fold_identity_log(keys.identity_log(create, keys.add_installation(inbox, wallet, second)))
    assert state.installations == {first.public, second.public}
    state = fold_identity_log(
        keys.identity_log(create, keys.add_installation(inbox, wallet, second), keys.revoke(inbox, wallet, first))
    )
    assert state.installations == {second.public}
    assert state.last_sequence_id == 3


def test_installation_may_add_a_wallet_and_revoking_it_removes_its_installations() -> None:
    wallet, first, create = wallet_inbox()
    inbox = create.inbox_id
    other_wallet, other_installation = EthKey.generate(), InstallationKey.generate()
    log = keys.identity_log(
        create,
        keys.add_member(inbox, first, other_wallet),  # an installation may add a wallet
        keys.add_installation(inbox, other_wallet, other_installation),
    )
    state = fold_identity_log(log)
    assert state.installations == {first.public, other_installation.public}
    assert MemberId(MemberKind.ETHEREUM, bytes.fromhex(other_wallet.address[2:])) in state.members
    state = fold_identity_log([*log, (4, keys.revoke(inbox, wallet, other_wallet).SerializeToString())])
    assert state.installations == {first.public}


def test_change_recovery_moves_revocation_rights() -> None:
    wallet, first, create = wallet_inbox()
    inbox, new_recovery = create.inbox_id, EthKey.generate()
    log = keys.identity_log(create, keys.change_recovery(inbox, wallet, new_recovery))
    assert str(fold_identity_log(log).recovery_identifier) == new_recovery.address
    rejected([*log, (3, keys.revoke(inbox, wallet, first).SerializeToString())], "unauthorized")
    state = fold_identity_log([*log, (3, keys.revoke(inbox, new_recovery, first).SerializeToString())])
    assert state.installations == frozenset()


def test_incremental_fold_equals_full_fold() -> None:
    wallet, _, create = wallet_inbox()
    extra = [keys.add_installation(create.inbox_id, wallet, InstallationKey.generate()) for _ in range(3)]
    log = keys.identity_log(create, *extra)
    full = fold_identity_log(log)
    partial = fold_identity_log(log[2:], previous=fold_identity_log(log[:2]))
    assert partial.installations == full.installations and len(full.installations) == 4
    assert partial.last_sequence_id == full.last_sequence_id == 4 and partial.update_count == 4
    assert partial.action_count == full.action_count == 5
    rejected(log[1:], "bad_update", previous=fold_identity_log(log[:2]))  # not newer than previous


def test_entries_are_ordered_by_sequence_id() -> None:
    wallet, _, create = wallet_inbox()
    log = keys.identity_log(create, keys.add_installation(create.inbox_id, wallet, InstallationKey.generate()))
    assert fold_identity_log(list(reversed(log))).last_sequence_id == 2
    rejected([log[0], (1, log[1][1])], "bad_update")  # duplicate sequence id


def test_protobuf_messages_are_accepted_as_entries() -> None:
    _, installation, create = wallet_inbox()
    assert fold_identity_log([(7, create)]).installations == {installation.public}


# --- forgeries ---------------------------------------------------------------------------------


def test_tampered_installation_signature() -> None:
    _, _, create = wallet_inbox()
    sig = create.actions[1].add.new_member_signature.installation_key
    sig.bytes = sig.bytes[:10] + bytes([sig.bytes[10] ^ 1]) + sig.bytes[11:]
    rejected(keys.identity_log(create), "bad_signature")


def test_tampered_wallet_signature() -> None:
    _, _, create = wallet_inbox()
    sig = create.actions[0].create_inbox.initial_identifier_signature.erc_191
    sig.bytes = bytes([sig.bytes[0] ^ 1]) + sig.bytes[1:]
    with pytest.raises(AssociationError) as info:
        fold_identity_log(keys.identity_log(create))
    assert info.value.reason in ("bad_signature", "not_a_member")


def test_tampered_content_breaks_signatures() -> None:
    _, _, create = wallet_inbox()
    create.actions[1].add.new_member_identifier.installation_public_key = InstallationKey.generate().public
    rejected(keys.identity_log(create), "bad_signature")
    _, _, create = wallet_inbox()
    create.client_timestamp_ns += 10**9  # the time is part of the signed text
    rejected(keys.identity_log(create), "bad_signature")


def test_inbox_id_not_matching_identifier_and_nonce() -> None:
    wallet = EthKey.generate()
    # signed honestly, but claiming the inbox id of nonce 1 while creating with nonce 0
    forged = keys.create_inbox(wallet, nonce=0, claimed_inbox_id=keys.inbox_id(wallet.address, 1))
    rejected(keys.identity_log(forged), "wrong_inbox_id")
    victim = keys.create_inbox(EthKey.generate())
    rejected(keys.identity_log(keys.create_inbox(wallet, claimed_inbox_id=victim.inbox_id)), "wrong_inbox_id")


def test_later_update_for_another_inbox() -> None:
    wallet, _, create = wallet_inbox()
    other = keys.create_inbox(wallet, nonce=1)
    stray = keys.add_installation(other.inbox_id, wallet, InstallationKey.generate())
    rejected(keys.identity_log(create, stray), "wrong_inbox_id")


def test_the_log_of_another_inbox_is_not_the_inbox_asked_for() -> None:
    # a genuine, signed log folds cleanly into its own inbox; asked for another inbox it is refused
    # before any signature is checked
    _, installation, create = wallet_inbox()
    victim = keys.create_inbox(EthKey.generate()).inbox_id
    assert fold_identity_log(keys.identity_log(create)).installations == {installation.public}
    assert fold_identity_log(keys.identity_log(create), inbox_id=create.inbox_id).inbox_id == create.inbox_id
    rejected(keys.identity_log(create), "inbox_id_mismatch", inbox_id=victim)
    forged = pb.IdentityUpdate()
    forged.CopyFrom(create)
    forged.actions[1].add.new_member_signature.installation_key.bytes = bytes(64)
    rejected(keys.identity_log(forged), "inbox_id_mismatch", inbox_id=victim)
    state = fold_identity_log(keys.identity_log(create))
    wallet2, _, other = wallet_inbox()
    rejected(
        [(2, keys.add_installation(other.inbox_id, wallet2, InstallationKey.generate()))],
        "inbox_id_mismatch",
        previous=state,
        inbox_id=create.inbox_id,
    )
    rejected([], "inbox_id_mismatch", previous=state, inbox_id=victim)


def test_replayed_update() -> None:
    wallet, _, create = wallet_inbox()
    add = keys.add_installation(create.inbox_id, wallet, InstallationKey.generate())
    rejected(keys.identity_log(create, add, add), "replayed_signature")


def test_replay_with_reencoded_wallet_signature() -> None:
    wallet, _, create = wallet_inbox()
    add = keys.add_installation(create.inbox_id, wallet, InstallationKey.generate())
    again = pb.IdentityUpdate()
    again.CopyFrom(add)
    existing = again.actions[0].add.existing_member_signature.erc_191
    existing.bytes = existing.bytes[:64] + bytes([existing.bytes[64] - 27])  # v 27/28 -> 0/1
    assert fold_identity_log(keys.identity_log(create, again)).installations  # the alias alone verifies
    rejected(keys.identity_log(create, add, again), "replayed_signature")


def test_installation_adding_installation() -> None:
    _, first, create = wallet_inbox()
    rejected(
        keys.identity_log(create, keys.add_installation(create.inbox_id, first, InstallationKey.generate())),
        "unauthorized",
    )


def test_revoke_by_non_recovery_member() -> None:
    wallet, first, create = wallet_inbox()
    inbox, second_wallet = create.inbox_id, EthKey.generate()
    log = keys.identity_log(create, keys.add_member(inbox, wallet, second_wallet))
    rejected([*log, (3, keys.revoke(inbox, first, first).SerializeToString())], "unauthorized")
    rejected([*log, (3, keys.revoke(inbox, second_wallet, first).SerializeToString())], "unauthorized")


def test_add_signed_by_non_member() -> None:
    _, _, create = wallet_inbox()
    stranger = EthKey.generate()
    rejected(
        keys.identity_log(create, keys.add_installation(create.inbox_id, stranger, InstallationKey.generate())),
        "not_a_member",
    )
    revoked_wallet, stranger_installation = EthKey.generate(), InstallationKey.generate()
    wallet, _, create = wallet_inbox()
    log = keys.identity_log(
        create,
        keys.add_member(create.inbox_id, wallet, revoked_wallet),
        keys.revoke(create.inbox_id, wallet, revoked_wallet),
        keys.add_installation(create.inbox_id, revoked_wallet, stranger_installation),
    )
    rejected(log, "not_a_member")


def test_new_member_signature_by_someone_else() -> None:
    wallet, _, create = wallet_inbox()
    add = keys.add_installation(create.inbox_id, wallet, InstallationKey.generate())
    impostor = InstallationKey.generate()
    add.actions[0].add.new_member_signature.CopyFrom(impostor.signature(signature_text(add)))
    rejected(keys.identity_log(create, add), "bad_signature")


def test_log_structure_errors() -> None:
    wallet, _, create = wallet_inbox()
    rejected([], "bad_update")
    rejected([(1, b"\xff\xff")], "bad_update")
    rejected(
        keys.identity_log(keys.add_installation(create.inbox_id, wallet, InstallationKey.generate())), "bad_update"
    )
    rejected(keys.identity_log(create, keys.create_inbox(wallet)), "bad_update")  # created twice
    rejected([(1, pb.IdentityUpdate(inbox_id=create.inbox_id).SerializeToString())], "bad_update")
    bad_address = pb.IdentityUpdate()
    bad_address.CopyFrom(create)
    bad_address.actions[0].create_inbox.initial_identifier = "0x1234"
    rejected([(1, bad_address.SerializeToString())], "bad_update")


def test_log_length_is_capped() -> None:
    rejected([(i, b"") for i in range(MAX_LOG_UPDATES + 1)], "log_too_long")
    wallet, _, create = wallet_inbox()
    big = keys.revoke(create.inbox_id, wallet, InstallationKey.generate())
    for _ in range(MAX_LOG_ACTIONS):
        big.actions.append(big.actions[0])
    rejected(keys.identity_log(create, big), "log_too_long")  # refused before any signature work


# --- passkeys, smart-contract wallets, legacy keys ----------------------------------------------


def passkey_signature(key: ec.EllipticCurvePrivateKey, text: str, challenge: str | None = None) -> sig_pb.Signature:
    public = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    client_data = json.dumps(
        {
            "type": "webauthn.get",
            "challenge": challenge or base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode(),
            "origin": "https://app.example",
        }
    ).encode()
    authenticator_data = hashlib.sha256(b"app.example").digest() + b"\x05\x00\x00\x00\x01"
    der = key.sign(authenticator_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256()))
    return sig_pb.Signature(
        passkey=sig_pb.RecoverablePasskeySignature(
            public_key=public, signature=der, authenticator_data=authenticator_data, client_data_json=client_data
        )
    )


def passkey_inbox(key: ec.EllipticCurvePrivateKey, challenge: str | None = None) -> pb.IdentityUpdate:
    public = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    installation = InstallationKey.generate()
    update = pb.IdentityUpdate(
        inbox_id=inbox_id_for(MemberId(MemberKind.PASSKEY, public), 0), client_timestamp_ns=keys.now_ns()
    )
    create = update.actions.add().create_inbox
    create.initial_identifier, create.initial_identifier_kind = public.hex(), pb.IDENTIFIER_KIND_PASSKEY
    create.initial_identifier_signature.erc_191.bytes = bytes(65)
    add = update.actions.add().add
    add.new_member_identifier.CopyFrom(installation.member_identifier())
    add.existing_member_signature.erc_191.bytes = bytes(65)
    add.new_member_signature.erc_191.bytes = bytes(65)
    text = signature_text(update)
    create.initial_identifier_signature.CopyFrom(passkey_signature(key, text, challenge))
    add.existing_member_signature.CopyFrom(passkey_signature(key, text, challenge))
    add.new_member_signature.CopyFrom(installation.signature(text))
    return update


def test_passkey_inbox() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    update = passkey_inbox(key)
    state = fold_identity_log([(1, update)])
    assert len(state.installations) == 1
    assert state.recovery_identifier.kind is MemberKind.PASSKEY
    rejected([(1, passkey_inbox(key, challenge="not-the-text"))], "bad_signature")


def test_passkey_high_s_alias_is_a_replay() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    create = passkey_inbox(key)
    installation = InstallationKey.generate()
    add = pb.IdentityUpdate(inbox_id=create.inbox_id, client_timestamp_ns=keys.now_ns())
    action = add.actions.add().add
    action.new_member_identifier.CopyFrom(installation.member_identifier())
    action.existing_member_signature.erc_191.bytes = bytes(65)
    action.new_member_signature.erc_191.bytes = bytes(65)
    text = signature_text(add)
    action.existing_member_signature.CopyFrom(passkey_signature(key, text))
    action.new_member_signature.CopyFrom(installation.signature(text))
    alias = pb.IdentityUpdate()
    alias.CopyFrom(add)
    passkey = alias.actions[0].add.existing_member_signature.passkey
    r, s = decode_dss_signature(passkey.signature)
    passkey.signature = encode_dss_signature(r, P256_N - s)  # the other valid s for the same signature
    assert len(fold_identity_log([(1, create), (2, alias)]).installations) == 2  # the alias alone verifies
    rejected([(1, create), (2, add), (3, alias)], "replayed_signature")


def scw_inbox(wallet: EthKey, chain: int = 1) -> pb.IdentityUpdate:
    update = pb.IdentityUpdate(inbox_id=keys.inbox_id(wallet.address), client_timestamp_ns=keys.now_ns())
    create = update.actions.add().create_inbox
    create.initial_identifier = wallet.address
    create.initial_identifier_signature.erc_6492.CopyFrom(
        sig_pb.SmartContractWalletSignature(
            account_id=f"eip155:{chain}:{wallet.address}", block_number=123, signature=b"scw-proof"
        )
    )
    return update


def test_smart_contract_wallet_signatures_go_to_the_verifier() -> None:
    wallet = EthKey.generate()
    update = scw_inbox(wallet)
    calls: list[tuple[str, int, bytes, bytes]] = []

    def verifier(account_id: str, block: int, signature: bytes, digest: bytes) -> bool:
        calls.append((account_id, block, signature, digest))
        return True

    state = fold_identity_log([(1, update)], scw_verifier=verifier)
    assert state.node_trusted_scw
    member = state.members[eth_address(wallet.address)]
    assert member.chain_id == 1
    assert calls == [(f"eip155:1:{wallet.address}", 123, b"scw-proof", eip191_hash(signature_text(update).encode()))]
    expected = ScwCheck(f"eip155:1:{wallet.address}", 123, b"scw-proof", calls[0][3])
    assert smart_contract_wallet_checks([(1, update), (2, keys.create_inbox(EthKey.generate()))]) == [expected]
    rejected([(1, update)], "bad_signature", scw_verifier=lambda *_: False)
    rejected([(1, update)], "scw_unverifiable", scw_verifier=lambda *_: None)
    rejected([(1, update)], "scw_unverifiable")


def test_smart_contract_wallet_must_keep_its_chain() -> None:
    wallet = EthKey.generate()
    create = scw_inbox(wallet, chain=1)
    add = pb.IdentityUpdate(inbox_id=create.inbox_id, client_timestamp_ns=keys.now_ns())
    installation = InstallationKey.generate()
    action = add.actions.add().add
    action.new_member_identifier.CopyFrom(installation.member_identifier())
    action.existing_member_signature.erc_6492.CopyFrom(
        sig_pb.SmartContractWalletSignature(account_id=f"eip155:10:{wallet.address}", block_number=5, signature=b"x")
    )
    action.new_member_signature.erc_191.bytes = bytes(65)
    action.new_member_signature.CopyFrom(installation.signature(signature_text(add)))
    rejected([(1, create), (2, add)], "unauthorized", scw_verifier=lambda *_: True)


def test_legacy_delegated_inbox() -> None:
    wallet = EthKey.generate()
    legacy = LegacyV2Key.generate(wallet)
    installation = InstallationKey.generate()
    create = keys.create_inbox(legacy, installation=installation)
    assert create.actions[0].create_inbox.initial_identifier_signature.HasField("delegated_erc_191")
    state = fold_identity_log(keys.identity_log(create))
    assert state.installations == {installation.public}
    assert str(state.recovery_identifier) == wallet.address
    # a legacy key acts once: reusing it replays the wallet's "Create Identity" signature
    rejected(keys.identity_log(create, keys.revoke(create.inbox_id, legacy, installation)), "replayed_signature")
    # a fresh legacy key of the recovery wallet still may not revoke; the wallet itself may
    fresh = LegacyV2Key.generate(wallet)
    rejected(keys.identity_log(create, keys.revoke(create.inbox_id, fresh, installation)), "unauthorized")
    assert not fold_identity_log(
        keys.identity_log(create, keys.revoke(create.inbox_id, wallet, installation))
    ).installations


def test_legacy_key_only_for_nonce_zero() -> None:
    legacy = LegacyV2Key.generate(EthKey.generate())
    rejected(keys.identity_log(keys.create_inbox(legacy, nonce=1)), "unauthorized")


def test_legacy_signature_by_another_key() -> None:
    wallet = EthKey.generate()
    honest, other = LegacyV2Key.generate(wallet), LegacyV2Key.generate(wallet)
    create = keys.create_inbox(honest)
    delegated = create.actions[0].create_inbox.initial_identifier_signature.delegated_erc_191
    delegated.delegated_key.CopyFrom(other.signed_public_key())  # wallet-signed, but not the signing key
    rejected(keys.identity_log(create), "bad_signature")
    create = keys.create_inbox(honest)
    delegated = create.actions[0].create_inbox.initial_identifier_signature.delegated_erc_191
    delegated.delegated_key.key_bytes += b"\x00"  # breaks the wallet's "Create Identity" signature
    with pytest.raises(AssociationError) as info:
        fold_identity_log(keys.identity_log(create))
    assert info.value.reason in ("bad_signature", "bad_update")


# --- d14n envelopes ------------------------------------------------------------------------------


def wrap(update: pb.IdentityUpdate, sequence_id: int, topic: bytes) -> bytes:
    client = env_pb.ClientEnvelope(identity_update=update)
    client.aad.target_topic = topic
    payer = env_pb.PayerEnvelope(unsigned_client_envelope=client.SerializeToString())
    unsigned = env_pb.UnsignedOriginatorEnvelope(
        originator_node_id=1, originator_sequence_id=sequence_id, payer_envelope_bytes=payer.SerializeToString()
    )
    return env_pb.OriginatorEnvelope(unsigned_originator_envelope=unsigned.SerializeToString()).SerializeToString()


def test_d14n_envelopes_unwrap_into_a_foldable_log() -> None:
    wallet, _, create = wallet_inbox()
    second = InstallationKey.generate()
    topic = identity_topic(create.inbox_id)
    assert topic[0] == 2 and topic[1:].hex() == create.inbox_id
    raw = [wrap(create, 10, topic), wrap(keys.add_installation(create.inbox_id, wallet, second), 11, topic)]
    entries = [identity_update_from_envelope(r, topic) for r in raw]
    assert [(e.originator_node_id, e.sequence_id) for e in entries] == [(1, 10), (1, 11)]
    state = fold_identity_log((e.sequence_id, e.update) for e in entries)
    assert second.public in state.installations and state.last_sequence_id == 11
    with pytest.raises(AssociationError) as info:
        identity_update_from_envelope(raw[0], identity_topic("00" * 32))
    assert info.value.reason == "bad_update"
    with pytest.raises(AssociationError):
        identity_update_from_envelope(b"\x0a\x03\xff\xff\xff")
    empty = env_pb.UnsignedOriginatorEnvelope(payer_envelope_bytes=env_pb.PayerEnvelope().SerializeToString())
    with pytest.raises(AssociationError):
        identity_update_from_envelope(env_pb.OriginatorEnvelope(unsigned_originator_envelope=empty.SerializeToString()))
