"""One function per XRPC method: query-string parameters in, JSON-ready body out.

Handlers know nothing of HTTP; they raise XrpcError and app.py turns it into a response.
Reads go through atmx.indexer.store.queries.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import asyncpg
from multidict import MultiMapping

from atmx.api.errors import XrpcError, invalid_request
from atmx.indexer.records.registry import PROTOCOLS
from atmx.indexer.records.stored import iso_time
from atmx.indexer.records.view import binding_view
from atmx.indexer.repo.syntax import is_did, is_handle
from atmx.indexer.store import queries
from atmx.indexer.store.queries import Binding, Identity
from atmx.indexer.store.status import backfill_status

Params = MultiMapping[str]
Body = dict[str, Any]
Handler = Callable[[asyncpg.Pool, Params], Awaitable[Body]]

NS = "directory.atmx"
INVALID_HANDLE = "handle.invalid"
MAX_BATCH = 100
MAX_LIST_LIMIT = 1000
DEFAULT_LIST_LIMIT = 100
HEALTH_TIMEOUT = 2.0
_INBOX_RE = re.compile(r"[0-9a-f]{64}")
_LIMIT_RE = re.compile(r"[0-9]{1,4}")


# --- parameters -------------------------------------------------------------------------


def _one(params: Params, name: str) -> str | None:
    values = params.getall(name, [])
    if len(values) > 1:
        raise invalid_request(f"Parameter {name} given more than once")
    return values[0] if values else None


def _required(params: Params, name: str) -> str:
    value = _one(params, name)
    if value is None or value == "":
        raise invalid_request(f"Missing required parameter: {name}")
    return value


def _batch(params: Params, name: str) -> list[str]:
    values = params.getall(name, [])
    if not values:
        raise invalid_request(f"Missing required parameter: {name}")
    if len(values) > MAX_BATCH:
        raise invalid_request(f"Too many {name}: at most {MAX_BATCH}")
    return list(dict.fromkeys(values))  # de-duplicate, keep order


def _bool(params: Params, name: str) -> bool:
    value = _one(params, name)
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    raise invalid_request(f"Parameter {name} must be true or false")


def _actor_key(actor: str) -> tuple[str, str]:
    """("did", did) or ("handle", lowercased handle); InvalidRequest otherwise."""
    if actor.startswith("did:"):
        if is_did(actor):
            return "did", actor
    elif is_handle(actor):
        return "handle", actor.lower()
    raise invalid_request(f"Invalid actor (expected a DID or a handle): {actor[:300]!r}")


def _inbox_id(value: str) -> str:
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


# --- views ------------------------------------------------------------------------------


def identity_view(identity: Identity) -> Body:
    view: Body = {
        "did": identity.did,
        "handle": identity.handle or INVALID_HANDLE,
        "accountStatus": identity.account_status or "active",
    }
    for b in identity.bindings:
        view[b.protocol] = binding_view(b)
    return view


def inbox_account_view(b: Binding) -> Body:
    view: Body = {"did": b.did, "handle": b.handle or INVALID_HANDLE, "status": b.status}
    if b.reason is not None:
        view["reason"] = b.reason
    if b.xmtp_env is not None:
        view["env"] = b.xmtp_env
    if b.status == "verified" and b.verified_at is not None:
        view["verifiedAt"] = iso_time(b.verified_at)
    view["uri"] = b.uri
    view["cid"] = b.cid
    return view


def listed_binding_view(b: Binding) -> Body:
    return {
        "did": b.did,
        "handle": b.handle or INVALID_HANDLE,
        "protocol": b.protocol,
        "status": b.status,
        "uri": b.uri,
        "cid": b.cid,
        "indexedAt": iso_time(b.indexed_at),
        b.protocol: binding_view(b),
    }


# --- methods ----------------------------------------------------------------------------


async def _lookup(pool: asyncpg.Pool, actors: Sequence[str]) -> list[tuple[str, Identity | None]]:
    keys = [_actor_key(actor) for actor in actors]
    dids = [value for kind, value in keys if kind == "did"]
    handles = [value for kind, value in keys if kind == "handle"]
    found = await queries.get_identities(pool, dids, handles)
    by_did = {identity.did: identity for identity in found}
    by_handle: dict[str, Identity] = {}
    for identity in found:  # ordered by DID, so a (transiently) shared handle resolves stably
        if identity.handle_lower is not None:
            by_handle.setdefault(identity.handle_lower, identity)
    return [
        (actor, (by_did if kind == "did" else by_handle).get(value))
        for actor, (kind, value) in zip(actors, keys, strict=True)
    ]


async def get_identity(pool: asyncpg.Pool, params: Params) -> Body:
    actor = _required(params, "actor")
    ((_, identity),) = await _lookup(pool, [actor])
    if identity is None:
        raise XrpcError(400, "IdentityNotFound", f"No messaging identity found for {actor}")
    return identity_view(identity)


async def get_identities(pool: asyncpg.Pool, params: Params) -> Body:
    results = await _lookup(pool, _batch(params, "actors"))
    identities: list[Body] = []
    seen: set[str] = set()
    not_found: list[str] = []
    for actor, identity in results:
        if identity is None:
            not_found.append(actor)
        elif identity.did not in seen:  # a DID and its handle in one request give one identity
            seen.add(identity.did)
            identities.append(identity_view(identity))
    return {"identities": identities, "notFound": not_found}


async def resolve_xmtp_inbox(pool: asyncpg.Pool, params: Params) -> Body:
    inbox_id = _inbox_id(_required(params, "inboxId"))
    include_unverified = _bool(params, "includeUnverified")
    found = await queries.resolve_xmtp_inboxes(pool, [inbox_id], include_unverified=include_unverified)
    return {"inboxId": inbox_id, "accounts": [inbox_account_view(b) for b in found.get(inbox_id, ())]}


async def resolve_xmtp_inboxes(pool: asyncpg.Pool, params: Params) -> Body:
    inbox_ids = [_inbox_id(value) for value in _batch(params, "inboxIds")]
    include_unverified = _bool(params, "includeUnverified")
    found = await queries.resolve_xmtp_inboxes(pool, inbox_ids, include_unverified=include_unverified)
    return {
        "inboxes": [
            {"inboxId": inbox_id, "accounts": [inbox_account_view(b) for b in found.get(inbox_id, ())]}
            for inbox_id in inbox_ids
        ]
    }


async def list_bindings(pool: asyncpg.Pool, params: Params) -> Body:
    protocol = _required(params, "protocol")
    if protocol not in PROTOCOLS:
        raise invalid_request("protocol must be one of: " + ", ".join(PROTOCOLS))
    raw_limit = _one(params, "limit")
    limit = DEFAULT_LIST_LIMIT
    if raw_limit is not None:
        if _LIMIT_RE.fullmatch(raw_limit) is None or not 1 <= int(raw_limit) <= MAX_LIST_LIMIT:
            raise invalid_request(f"limit must be an integer from 1 to {MAX_LIST_LIMIT}")
        limit = int(raw_limit)
    raw_cursor = _one(params, "cursor")
    after = decode_cursor(raw_cursor) if raw_cursor else None
    # One row more than asked tells whether another page exists, so the last page has no cursor.
    rows = await queries.list_bindings(pool, protocol, after_did=after, limit=limit + 1)
    body: Body = {"bindings": [listed_binding_view(b) for b in rows[:limit]]}
    if len(rows) > limit:
        body["cursor"] = encode_cursor(rows[limit - 1].did)
    return body


async def get_index_status(pool: asyncpg.Pool, params: Params) -> Body:
    """Index size, cursor and lag, and backfill progress: what the status page shows."""
    counts = await queries.get_index_counts(pool)
    state = await queries.get_health(pool)
    body: Body = {
        "accounts": counts.accounts,
        "bindings": [
            {"protocol": protocol, "status": status, "count": n} for (protocol, status), n in counts.bindings.items()
        ],
    }
    if state.cursor is not None:
        body["cursor"] = state.cursor
    if state.lag_seconds is not None:
        body["lagSeconds"] = max(0, round(state.lag_seconds))  # lexicons have no floats
    progress = await backfill_status(pool)
    if progress["repos"] or progress["resyncQueue"]:  # as in _health: only once a backfill was asked for
        body["backfill"] = progress
    return body


async def health(pool_provider: Callable[[], asyncpg.Pool], version: str) -> tuple[int, Body]:
    """(HTTP status, body) for /xrpc/_health; any database failure is a 503, never a 500."""
    try:
        state = await asyncio.wait_for(queries.get_health(pool_provider()), HEALTH_TIMEOUT)
    except Exception:
        return 503, {"version": version, "error": "DatabaseUnavailable"}
    body: Body = {"version": version, "cursor": state.cursor, "lagSeconds": state.lag_seconds}
    try:
        progress = await asyncio.wait_for(backfill_status(pool_provider()), HEALTH_TIMEOUT)
    except Exception:  # progress is informative; the service is healthy without it
        progress = None
    if progress is not None and (progress["repos"] or progress["resyncQueue"]):
        body["backfill"] = progress  # only once a backfill or a repair has been asked for
    return 200, body


METHODS: Mapping[str, Handler] = {
    f"{NS}.getIdentity": get_identity,
    f"{NS}.getIdentities": get_identities,
    f"{NS}.resolveXmtpInbox": resolve_xmtp_inbox,
    f"{NS}.resolveXmtpInboxes": resolve_xmtp_inboxes,
    f"{NS}.listBindings": list_bindings,
    f"{NS}.getIndexStatus": get_index_status,
}
