"""``org.xmtp.inbox`` records: the binding of an XMTP inbox ID to the repo's DID.

Format checks only; the signature itself (Ed25519ph by an installation key of the inbox,
over the DID string) is verified elsewhere against the inbox's installation keys.
"""

from __future__ import annotations

import binascii
import re
from base64 import b64decode, b64encode
from dataclasses import dataclass
from typing import Any, Final

from atmx.indexer.records.envelope import RecordError, check_envelope
from atmx.indexer.records.family import Checked, Family
from atmx.indexer.records.stored import StoredBinding, iso_time, text_field
from atmx.indexer.repo.syntax import is_datetime

__all__ = ["FAMILY", "NSID", "RecordError", "XmtpInbox", "validate_xmtp_inbox"]

NSID: Final = "org.xmtp.inbox"
_INBOX_ID_RE: Final = re.compile(r"[0-9a-f]{64}")
# 64 bytes -> 88 chars of standard base64 ending in "==" (Node's Buffer.toString("base64")).
_SIGNATURE_RE: Final = re.compile(r"[A-Za-z0-9+/]{86}==")


@dataclass(frozen=True, slots=True)
class XmtpInbox:
    inbox_id: str  # 64 lowercase hex chars
    verification_signature: str  # the base64 string exactly as published
    signature_bytes: bytes  # its 64 decoded bytes
    created_at: str


def validate_xmtp_inbox(record: dict[str, Any], rkey: str) -> XmtpInbox:
    """Check an ``org.xmtp.inbox`` record (rkey ``self``); raises RecordError."""
    record = check_envelope(record, rkey, NSID, ("id", "verificationSignature", "createdAt"))

    inbox_id = record["id"]
    if type(inbox_id) is not str or _INBOX_ID_RE.fullmatch(inbox_id) is None:
        raise RecordError("bad_inbox_id", "id is not 64 lowercase hex characters")

    signature = record["verificationSignature"]
    if type(signature) is not str or _SIGNATURE_RE.fullmatch(signature) is None:
        raise RecordError("bad_signature_encoding", "verificationSignature is not padded base64 of 64 bytes")
    try:
        signature_bytes = b64decode(signature, validate=True)
    except binascii.Error:  # unreachable after the regex, kept as a guard
        raise RecordError("bad_signature_encoding", "verificationSignature is not base64") from None
    # Non-zero padding bits would let two strings stand for the same signature.
    if b64encode(signature_bytes).decode("ascii") != signature:
        raise RecordError("bad_signature_encoding", "verificationSignature is not canonical base64")

    created_at = record["createdAt"]
    if not is_datetime(created_at):
        raise RecordError("bad_created_at", "createdAt is not an atproto datetime")
    return XmtpInbox(inbox_id, signature, signature_bytes, created_at)


def _check(record: dict[str, Any], rkey: str) -> Checked:
    inbox = validate_xmtp_inbox(record, rkey)
    # repo-verified; the XMTP stage decides verified / invalid / unverifiable
    return Checked("pending", inbox_id=inbox.inbox_id)


def _project(b: StoredBinding) -> dict[str, Any]:
    view: dict[str, Any] = {}
    inbox_id = b.xmtp_inbox_id if b.xmtp_inbox_id is not None else text_field(b.record, "id")
    if inbox_id is not None:
        view["inboxId"] = inbox_id
    signature = text_field(b.record, "verificationSignature")
    if signature is not None:
        view["verificationSignature"] = signature
    if b.xmtp_env is not None:
        view["env"] = b.xmtp_env
    if b.xmtp_installation is not None:
        view["installationId"] = b.xmtp_installation
    if b.status == "verified" and b.verified_at is not None:
        view["verifiedAt"] = iso_time(b.verified_at)
    return view


FAMILY: Final = Family(NSID, "xmtp", single=True, validate=_check, project=_project)
