"""Rows written straight into a test database, for the tests of what reads them (queries, API)."""

from __future__ import annotations

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
