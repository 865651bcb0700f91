"""The org.xmtp.inbox binding proof: an installation key of the inbox signed the repo's DID; pure."""

from __future__ import annotations

from collections.abc import Iterable

from atmx.indexer.xmtp.ed25519ph import PUBLIC_SIGNATURE_CONTEXT, verify_ed25519ph


def check_binding(did: str, signature: bytes, installations: Iterable[bytes]) -> bytes | None:
    """The installation key whose Ed25519ph(ctx PUBLIC SIGNATURE CONTEXT) signature over the DID
    is `signature` (what libxmtp `verifySignedWithPublicKey` accepts), or None if none does."""
    if len(signature) != 64:
        return None
    message = did.encode()
    for key in sorted(installations):  # sorted: the answer does not depend on set order
        if verify_ed25519ph(key, message, signature, PUBLIC_SIGNATURE_CONTEXT):
            return key
    return None
