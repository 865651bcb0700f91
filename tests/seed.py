"""Rows written straight into a test database, for the tests of what reads them (queries, API)."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Any

import asyncpg

INBOX_A = "a" * 64
INBOX_B = "b" * 64
SIGNATURE = "Zm9v" * 21 + "Zg=="  # base64 of 64 bytes
CREATED_AT = "2026-01-02T03:04:05.678Z"
VERIFIED_AT = datetime(2026, 1, 2, 3, 5, tzinfo=UTC)


async def seed_account(
    pool: asyncpg.Pool,
    did: str,
    *,
    handle: str | None = None,
    handle_verified: bool = True,
    status: str | None = None,
) -> None:
    await pool.execute(
        "INSERT INTO accounts (did, handle, handle_verified, status) VALUES ($1, $2, $3, $4)",
        did,
        handle,
        handle_verified,
        status,
    )


async def seed_xmtp(
    pool: asyncpg.Pool,
    did: str,
    *,
    inbox: str | None = INBOX_A,
    status: str = "verified",
    reason: str | None = None,
    env: str | None = "production",
    installation: str | None = "cd" * 32,
    record: Any = None,
    created_at: str | None = CREATED_AT,
) -> None:
    if record is None:
        record = {
            "$type": "org.xmtp.inbox",
            "id": inbox,
            "verificationSignature": SIGNATURE,
            "createdAt": created_at,
        }
    await pool.execute(
        """INSERT INTO bindings (did, protocol, collection, rkey, uri, cid, rev, record, status, reason,
                                 xmtp_inbox_id, xmtp_env, xmtp_installation, created_at, verified_at)
           VALUES ($1, 'xmtp', 'org.xmtp.inbox', 'self', $2, $3, '3lrev', $4, $5, $6, $7, $8, $9, $10, $11)""",
        did,
        f"at://{did}/org.xmtp.inbox/self",
        "bafyreigxmtp" + "a" * 47,
        record,
        status,
        reason,
        inbox,
        env,
        installation,
        created_at,
        VERIFIED_AT if status == "verified" else None,
    )


async def seed_didcomm(
    pool: asyncpg.Pool, did: str, *, status: str = "valid", reason: str | None = None, record: Any = None
) -> None:
    if record is None:
        record = {
            "$type": "at.didcomm.keyPackage",
            "did": "did:peer:2.Ez6LSexample",
            "mediators": ["did:web:mediator.example.com"],
            "label": "phone",
            "createdAt": CREATED_AT,
        }
    await pool.execute(
        """INSERT INTO bindings (did, protocol, collection, rkey, uri, cid, rev, record, status, reason, created_at)
           VALUES ($1, 'didcomm', 'at.didcomm.keyPackage', 'self', $2, $3, '3lrev', $4, $5, $6, $7)""",
        did,
        f"at://{did}/at.didcomm.keyPackage/self",
        "bafyreigdidc" + "a" * 47,
        record,
        status,
        reason,
        record.get("createdAt") if isinstance(record, dict) else None,
    )


# --- Germ and Catbird ---------------------------------------------------------------------------

# A real Ed25519 public key (RFC 8032 test 1) and its Germ TypedKeyMaterial form (byte 3 + key).
GERM_KEY = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
GERM_KEY_B64 = "A9damAGCsQq31Uv+08lkBzoO4XLz2qYjJa8CGmj3B1Ea"  # unpadded base64 of b"\x03" + GERM_KEY
DEVICE_KEY = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")  # RFC 8032 test 2


def germ_record(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "$type": "com.germnetwork.declaration",
        "version": "1.1.0",
        "currentKey": {"$bytes": GERM_KEY_B64},
        "messageMe": {"messageMeUrl": "https://landing.ger.mx/newUser", "showButtonTo": "usersIFollow"},
        "keyPackage": {"$bytes": "AAEC"},
        "continuityProofs": [],
    }
    return record | changes


def catbird_declaration_record(**changes: Any) -> dict[str, Any]:
    record = {
        "$type": "blue.catbird.chat.declaration",
        "allowIncoming": "following",
        "deliveryService": "did:web:chat.catbird.blue",
        "protocolVersion": "1",
        "createdAt": CREATED_AT,
    }
    return record | changes


def device_record(key: bytes = DEVICE_KEY, *, legacy: bool = False, **changes: Any) -> dict[str, Any]:
    record = {
        "$type": "blue.catbird.mlsChat.device" if legacy else "blue.catbird.chat.device",
        "mlsSignaturePublicKey": {"$bytes": base64.b64encode(key).decode().rstrip("=")},
        "algorithm": "ed25519",
        "createdAt": CREATED_AT,
    }
    return record | changes


async def seed_binding(
    pool: asyncpg.Pool,
    did: str,
    protocol: str,
    collection: str,
    rkey: str,
    record: Any,
    *,
    status: str = "valid",
    reason: str | None = None,
    key: bytes | None = None,
) -> str:
    """Any binding row, as the writer stores it (key_bytes only for a record that passed)."""
    uri = f"at://{did}/{collection}/{rkey}"
    await pool.execute(
        """INSERT INTO bindings (did, protocol, collection, rkey, uri, cid, rev, record, status, reason,
                                 created_at, key_bytes)
           VALUES ($1, $2, $3, $4, $5, $6, '3lrev', $7, $8, $9, $10, $11)""",
        did,
        protocol,
        collection,
        rkey,
        uri,
        "bafyrei" + base64.b32encode(hashlib.sha256(uri.encode()).digest()).decode().lower().rstrip("="),
        record,
        status,
        reason,
        record.get("createdAt") if isinstance(record, dict) else None,
        key if status in ("valid", "verified") else None,
    )
    return uri


async def seed_germ(pool: asyncpg.Pool, did: str, **kwargs: Any) -> str:
    record = kwargs.pop("record", None) or germ_record()
    kwargs.setdefault("key", GERM_KEY)
    return await seed_binding(pool, did, "germ", "com.germnetwork.declaration", "self", record, **kwargs)


async def seed_catbird(
    pool: asyncpg.Pool, did: str, *, devices: dict[str, bytes] | None = None, declaration: bool = True
) -> None:
    """A valid declaration and one valid current device per (rkey, key)."""
    if declaration:
        await seed_binding(pool, did, "catbird", "blue.catbird.chat.declaration", "self", catbird_declaration_record())
    for rkey, key in (devices if devices is not None else {"dev-1": DEVICE_KEY}).items():
        await seed_binding(pool, did, "catbird", "blue.catbird.chat.device", rkey, device_record(key), key=key)


async def seed_did_doc(pool: asyncpg.Pool, did: str, services: list[Any]) -> None:
    doc = {"id": did, "service": services}
    await pool.execute("INSERT INTO did_cache (did, doc) VALUES ($1, $2)", did, doc)
