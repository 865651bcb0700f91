"""Drive real libxmtp (PyPI `xmtp-bindings`, uniffi bindings of libxmtp v1.10.0) against a loopback node.

Test-only. One `LibxmtpInbox` is one Ethereum wallet's XMTP inbox; each `Installation` is one
libxmtp client (its own SQLite database) registered in that inbox. Everything runs offline against
`tests/xmtp_node.py`. libxmtp's async methods are uniffi futures that do not block the event loop;
its synchronous calls used here (signing, key derivation) are CPU-only and take microseconds.

The calls that work (libxmtp v1.10.0):
- `connect_to_backend(url, None, is_secure, None, None, None, None)`
- `create_client(api, api, DbOptions(db=path, ...), inbox_id, identifier, 0, None,
  FfiDeviceSyncMode.DISABLED, True, None)`: asks GetInboxIds; an unknown identifier makes the
  signature request "Create inbox + Grant messaging access", a known one only "Grant messaging access".
- `client.signature_request()` -> `await sr.signature_text()` -> wallet signs with
  `ethereum_sign_recoverable(text, key, True)` -> `await sr.add_ecdsa_signature(sig)` ->
  `await client.register_identity(sr)`.
- Revocation: `await client.revoke_installations([id])` -> same signing steps ->
  `await client.apply_signature_request(sr)`.
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

# libxmtp logs every INFO line to the terminal unless told otherwise; it reads RUST_LOG when it loads.
os.environ.setdefault("RUST_LOG", "warn")

from xmtp_bindings import xmtpv3 as x

__all__ = ["Installation", "LibxmtpInbox", "Wallet"]


@dataclass(frozen=True, slots=True)
class Wallet:
    """A throwaway Ethereum account (EOA) that owns and recovers the inbox."""

    private_key: bytes
    address: str  # lowercase 0x + 40 hex

    @classmethod
    def generate(cls, private_key: bytes | None = None) -> Wallet:
        key = private_key if private_key is not None else secrets.token_bytes(32)
        address = x.ethereum_address_from_pubkey(x.ethereum_generate_public_key(key)).lower()
        return cls(key, address)

    @property
    def identifier(self) -> x.FfiIdentifier:
        return x.FfiIdentifier(identifier=self.address, identifier_kind=x.FfiIdentifierKind.ETHEREUM)

    def sign(self, text: str) -> bytes:
        """ERC-191 personal_sign, 65 bytes r||s||v."""
        return bytes(x.ethereum_sign_recoverable(text.encode(), self.private_key, True))

    async def approve(self, request: x.FfiSignatureRequest) -> str:
        """Sign a libxmtp signature request with the wallet; returns the text that was signed."""
        text = await request.signature_text()
        await request.add_ecdsa_signature(self.sign(text))
        return text


@dataclass(slots=True)
class Installation:
    """One registered libxmtp client; its installation id is its Ed25519 public key."""

    client: x.FfiXmtpClient
    id: bytes  # 32 bytes
    db_path: Path

    def sign(self, text: str) -> bytes:
        """`signWithInstallationKey(text)`: Ed25519ph, context `PUBLIC SIGNATURE CONTEXT`; 64 bytes."""
        return bytes(self.client.sign_with_installation_key(text))

    def verify(self, text: str, signature: bytes, public_key: bytes) -> bool:
        """libxmtp's own `verifySignedWithPublicKey` (an instance method in these bindings)."""
        try:
            self.client.verify_signed_with_public_key(text, signature, public_key)
        except x.FfiError:
            return False
        return True


@dataclass(slots=True)
class LibxmtpInbox:
    """An XMTP inbox created through real libxmtp on the node at `node_url`."""

    api: x.XmtpApiClient
    wallet: Wallet
    inbox_id: str
    workdir: Path
    installations: list[Installation] = field(default_factory=list)
    signed_texts: list[str] = field(default_factory=list)  # every identity-update text the wallet signed

    @classmethod
    async def create(cls, node_url: str, workdir: Path, private_key: bytes | None = None) -> LibxmtpInbox:
        """Connect, derive the inbox id (nonce 0) and register the first installation."""
        api = await x.connect_to_backend(node_url, None, node_url.startswith("https://"), None, None, None, None)
        wallet = Wallet.generate(private_key)
        inbox = cls(api, wallet, x.generate_inbox_id(wallet.identifier, 0), workdir)
        await inbox.add_installation()
        return inbox

    async def add_installation(self) -> Installation:
        """A new libxmtp client (fresh database) registered in this inbox, approved by the wallet."""
        path = self.workdir / f"{self.inbox_id[:8]}-{len(self.installations)}.db3"
        db = x.DbOptions(db=str(path), encryption_key=None, max_db_pool_size=None, min_db_pool_size=None)
        client = await x.create_client(
            self.api,
            self.api,
            db,
            self.inbox_id,
            self.wallet.identifier,
            0,
            None,
            x.FfiDeviceSyncMode.DISABLED,
            True,
            None,
        )
        request = client.signature_request()
        if request is None:
            raise RuntimeError("libxmtp has no signature request for a new installation")
        self.signed_texts.append(await self.wallet.approve(request))
        await client.register_identity(request)
        installation = Installation(client, bytes(client.installation_id()), path)
        self.installations.append(installation)
        return installation

    async def revoke(self, target: Installation, *, via: Installation | None = None) -> str:
        """Revoke `target` through libxmtp (signed by the wallet = the recovery identifier).

        Returns the signed text. `via` is the client that builds and publishes the request
        (default: the first other installation).
        """
        actor = via or next(i for i in self.installations if i is not target)
        request = await actor.client.revoke_installations([target.id])
        text = await self.wallet.approve(request)
        self.signed_texts.append(text)
        await actor.client.apply_signature_request(request)
        return text

    def inbox_record(self, did: str, installation: Installation | None = None) -> dict[str, str]:
        """The `org.xmtp.inbox` record an app (xmtplabs/bluesky-chat) would publish for `did`."""
        signer = installation or self.installations[0]
        return {
            "$type": "org.xmtp.inbox",
            "id": self.inbox_id,
            "verificationSignature": base64.b64encode(signer.sign(did)).decode(),
            "createdAt": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }

    async def installation_ids(self, via: Installation | None = None) -> set[bytes]:
        """libxmtp's own view of the current installations, refreshed from the node."""
        actor = via or self.installations[0]
        state = await actor.client.inbox_state(True)
        if state.inbox_id != self.inbox_id:
            raise RuntimeError(f"libxmtp reports inbox {state.inbox_id}, expected {self.inbox_id}")
        return {bytes(i.id) for i in state.installations}

    def close(self) -> None:
        """Drop the clients: libxmtp stops their background workers when the objects are freed.

        (`release_db_connection()` is not the way: the workers keep running and log pool errors.)
        """
        self.installations.clear()
