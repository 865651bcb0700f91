"""Records of valid shape for the end-to-end tiers (written through the reference PDS)."""

from __future__ import annotations

import base64
import secrets
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from devnet_harness import now_iso

from atmx.indexer.repo.crypto import encode_base58btc


def handle() -> str:
    return f"u{secrets.token_hex(4)}.test"


def did_peer_2() -> str:
    """A real did:peer:2 with one X25519 key-agreement key (multicodec 0xec)."""
    raw = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "did:peer:2.E" + encode_base58btc(b"\xec\x01" + raw)


def xmtp_record(inbox_id: str | None = None) -> dict[str, Any]:
    return {
        "$type": "org.xmtp.inbox",
        "id": inbox_id or secrets.token_hex(32),
        "verificationSignature": base64.b64encode(secrets.token_bytes(64)).decode(),
        "createdAt": now_iso(),
    }


def keypackage_record(label: str = "phone") -> dict[str, Any]:
    return {
        "$type": "at.didcomm.keyPackage",
        "did": did_peer_2(),
        "mediators": ["did:web:mediator.example.com"],
        "label": label,
        "createdAt": now_iso(),
    }
