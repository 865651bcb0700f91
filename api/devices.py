"""directory.atmx.checkMlsDevice: is an MLS signature key one of an account's current device keys?

Catbird authorises an MLS leaf only if its signature key is among the account's active device
records (`blue.catbird.chat.device`), failing closed. The answer here follows that rule: only a
valid record of the current collection counts. Legacy `blue.catbird.mlsChat.device` records
(superseded, possibly left behind by a retired device), invalid or deleted records, and the
records of hidden accounts never authorise. The key is compared in lookup form (Ed25519 as given,
P-256 compressed), so either SEC1 form of a P-256 key matches.
"""

from __future__ import annotations

import binascii
import re
from base64 import b64decode
from typing import Final

import asyncpg

from atmx.api import params as params_mod
from atmx.api.bodies import Body
from atmx.api.errors import invalid_request
from atmx.api.params import Params
from atmx.indexer.records.keys import lookup_form
from atmx.indexer.records.registry import FAMILIES
from atmx.indexer.records.view import binding_view
from atmx.indexer.repo.syntax import is_did
from atmx.indexer.store import queries

__all__ = ["AUTHORIZING_COLLECTIONS", "check_mls_device", "parse_key"]

AUTHORIZING_COLLECTIONS: Final = tuple(
    f.nsid for f in FAMILIES if f.protocol == "catbird" and not f.single and not f.legacy
)
MAX_KEY_CHARS: Final = 128  # a 65-byte uncompressed P-256 point is 88 base64 characters
# standard or URL-safe base64, padded or not; a space stands for a '+' a client left unescaped
_KEY_RE: Final = re.compile(r"[A-Za-z0-9+/ _-]+={0,2}")


def parse_key(value: str) -> bytes:
    """The bytes of a base64 `key` parameter; InvalidRequest when it is not base64."""
    if len(value) > MAX_KEY_CHARS or _KEY_RE.fullmatch(value) is None:
        raise invalid_request("key must be a base64 public key")
    text = value.replace(" ", "+").replace("-", "+").replace("_", "/").rstrip("=")
    if len(text) % 4 == 1:
        raise invalid_request("key must be a base64 public key")
    try:
        return b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise invalid_request("key must be a base64 public key") from None


async def check_mls_device(pool: asyncpg.Pool, params: Params) -> Body:
    did = params_mod.required(params, "did")
    if not is_did(did):
        raise invalid_request(f"did is not a DID: {did[:300]!r}")
    key = parse_key(params_mod.required(params, "key"))
    device = await queries.find_mls_device(pool, did, lookup_form(key), AUTHORIZING_COLLECTIONS)
    body: Body = {"did": did, "authorized": device is not None}
    if device is not None:
        body["device"] = binding_view(device)
    return body
