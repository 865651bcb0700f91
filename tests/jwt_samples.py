"""Inter-service JWTs signed with real keys (tests/forge.py's SigningKey): well-formed ones, and
ones built from JSON text as given, for the hostile shapes json.dumps would never write."""

from __future__ import annotations

import base64
import json
from typing import Any

from forge import SigningKey


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(key: SigningKey, payload: dict[str, Any], *, alg: str | None = None, **header: Any) -> str:
    head = {"typ": "JWT", "alg": alg or ("ES256K" if key.curve == "k256" else "ES256"), **header}
    signing_input = f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64url(key.sign(signing_input.encode()))}"


def raw_jwt(key: SigningKey, header: str, payload: str) -> str:
    """A signed token from JSON text as given (for literals json.dumps would not write)."""
    signing_input = f"{b64url(header.encode())}.{b64url(payload.encode())}"
    return f"{signing_input}.{b64url(key.sign(signing_input.encode()))}"
