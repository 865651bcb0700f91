"""XRPC query parameters: one value, a required value, a batch, a boolean, a cursor (pure).

Every malformed parameter is an `InvalidRequest` with a message that names it.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final

from multidict import MultiMapping

from atmx.api.errors import invalid_request
from atmx.indexer.repo.syntax import is_did, is_handle

Params = MultiMapping[str]

MAX_BATCH: Final = 100
_INBOX_RE: Final = re.compile(r"[0-9a-f]{64}")
_LIMIT_RE: Final = re.compile(r"[0-9]{1,4}")


def one(params: Params, name: str) -> str | None:
    values = params.getall(name, [])
    if len(values) > 1:
        raise invalid_request(f"Parameter {name} given more than once")
    return values[0] if values else None


def required(params: Params, name: str) -> str:
    value = one(params, name)
    if value is None or value == "":
        raise invalid_request(f"Missing required parameter: {name}")
    return value


def batch(params: Params, name: str) -> list[str]:
    values = params.getall(name, [])
    if not values:
        raise invalid_request(f"Missing required parameter: {name}")
    if len(values) > MAX_BATCH:
        raise invalid_request(f"Too many {name}: at most {MAX_BATCH}")
    return list(dict.fromkeys(values))  # de-duplicate, keep order


def boolean(params: Params, name: str) -> bool:
    value = one(params, name)
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    raise invalid_request(f"Parameter {name} must be true or false")


def actor_key(actor: str) -> tuple[str, str]:
    """("did", did) or ("handle", lowercased handle); InvalidRequest otherwise."""
    if actor.startswith("did:"):
        if is_did(actor):
            return "did", actor
    elif is_handle(actor):
        return "handle", actor.lower()
    raise invalid_request(f"Invalid actor (expected a DID or a handle): {actor[:300]!r}")


def inbox_id(value: str) -> str:
    if _INBOX_RE.fullmatch(value) is None:
        raise invalid_request("inboxId must be 64 lowercase hex characters")
    return value


def encode_cursor(did: str) -> str:
    return base64.urlsafe_b64encode(did.encode()).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> str:
    try:
        did = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8")
    except (binascii.Error, ValueError):
        raise invalid_request("Malformed cursor") from None
    if not is_did(did):
        raise invalid_request("Malformed cursor")
    return did


def limit(params: Params, default: int, maximum: int) -> int:
    raw = one(params, "limit")
    if raw is None:
        return default
    if _LIMIT_RE.fullmatch(raw) is None or not 1 <= int(raw) <= maximum:
        raise invalid_request(f"limit must be an integer from 1 to {maximum}")
    return int(raw)
