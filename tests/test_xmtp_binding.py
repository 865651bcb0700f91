"""check_binding: which current installation, if any, signed the repo's DID."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from xmtp_keys import InstallationKey

from atmx.indexer.xmtp.binding import check_binding
from atmx.indexer.xmtp.ed25519ph import IDENTITY_UPDATE_CONTEXT, PUBLIC_SIGNATURE_CONTEXT

VECTORS: dict[str, Any] = json.loads((Path(__file__).parent / "fixtures" / "xmtp-vectors.json").read_text())
LIBXMTP_KEY = bytes.fromhex(VECTORS["installation_key"]["public_key_hex"])
DID_VECTOR = VECTORS["sign_with_installation_key_vectors"][0]
DID = DID_VECTOR["text"]
DID_SIG = base64.b64decode(DID_VECTOR["signature_b64"])


def test_libxmtp_signature_binds_its_installation() -> None:
    others = [InstallationKey.generate().public for _ in range(3)]
    assert check_binding(DID, DID_SIG, [*others, LIBXMTP_KEY]) == LIBXMTP_KEY


def test_installation_not_in_inbox_is_refused() -> None:
    assert check_binding(DID, DID_SIG, [InstallationKey.generate().public]) is None
    assert check_binding(DID, DID_SIG, []) is None


def test_signature_copied_to_another_did_is_refused() -> None:
    assert check_binding("did:plc:ewvi7nxzyoun6zhxrhs64oiy", DID_SIG, [LIBXMTP_KEY]) is None
    assert check_binding("did:web:example.com", DID_SIG, [LIBXMTP_KEY]) is None


def test_wrong_context_is_refused() -> None:
    wrong = bytes.fromhex(VECTORS["negative"][0]["signature_hex"])
    assert check_binding(DID, wrong, [LIBXMTP_KEY]) is None
    key = InstallationKey.generate()
    assert check_binding(DID, key.sign_ph(DID, IDENTITY_UPDATE_CONTEXT), [key.public]) is None
    assert check_binding(DID, key.sign_ph(DID, PUBLIC_SIGNATURE_CONTEXT), [key.public]) == key.public


def test_truncated_or_padded_signature_is_refused() -> None:
    assert check_binding(DID, DID_SIG[:63], [LIBXMTP_KEY]) is None
    assert check_binding(DID, DID_SIG + b"\x00", [LIBXMTP_KEY]) is None
    assert check_binding(DID, b"", [LIBXMTP_KEY]) is None


def test_non_ascii_text_vector() -> None:
    v = VECTORS["sign_with_installation_key_vectors"][2]
    assert check_binding(v["text"], base64.b64decode(v["signature_b64"]), {LIBXMTP_KEY}) == LIBXMTP_KEY


def test_malformed_installation_keys_are_skipped() -> None:
    assert check_binding(DID, DID_SIG, [b"", b"\x00" * 31, LIBXMTP_KEY + b"\x00", LIBXMTP_KEY]) == LIBXMTP_KEY
