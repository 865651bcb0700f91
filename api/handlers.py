"""One function per XRPC method: query-string parameters in, JSON-ready body out.

Handlers know nothing of HTTP; they raise XrpcError and app.py turns it into a response.
Reads go through atmx.indexer.store.queries.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence

import asyncpg

from atmx.api import params as params_mod
from atmx.api.bodies import Body, identity_view, inbox_account_view, listed_binding_view
from atmx.api.devices import check_mls_device
from atmx.api.errors import XrpcError, invalid_request
from atmx.api.params import Params
from atmx.api.proofs import get_binding_history, get_binding_proof
from atmx.api.responses import Blob
from atmx.indexer.records.registry import ONE_RECORD_PROTOCOLS, PROTOCOLS
from atmx.indexer.repo.syntax import is_did
from atmx.indexer.store import queries
from atmx.indexer.store.queries import Identity
from atmx.indexer.store.status import backfill_status, binding_rows

Handler = Callable[[asyncpg.Pool, Params], Awaitable[Body | Blob]]
# handle -> the DID it resolves to now (DNS TXT or /.well-known), or None when it resolves to none
HandleResolver = Callable[[str], Awaitable[str | None]]

NS = "directory.atmx"
MAX_LIST_LIMIT = 1000
DEFAULT_LIST_LIMIT = 100
HEALTH_TIMEOUT = 2.0


# --- methods ----------------------------------------------------------------------------


async def _lookup(
    pool: asyncpg.Pool, actors: Sequence[str], resolve_handle: HandleResolver | None
) -> list[tuple[str, Identity | None]]:
    keys = [params_mod.actor_key(actor) for actor in actors]
    dids = [value for kind, value in keys if kind == "did"]
    handles = list(dict.fromkeys(value for kind, value in keys if kind == "handle"))
    found = await queries.get_identities(pool, dids, handles)
    by_did = {identity.did: identity for identity in found}
    by_handle: dict[str, Identity] = {}
    if resolve_handle is None:  # the index's word alone (the handle checks keep it current)
        for identity in found:  # ordered by DID, so a (transiently) shared handle resolves stably
            if identity.handle_lower is not None:
                by_handle.setdefault(identity.handle_lower, identity)
    else:
        # A domain can change hands without its former owner's DID document saying so: answer
        # only with the account the handle resolves to now (and whose document claims it).
        # Only handles the index holds are resolved: a client cannot make atmx fetch from any
        # domain it names.
        held = [h for h in handles if any(i.handle_lower == h for i in found)]
        owners = await asyncio.gather(*(resolve_handle(h) for h in held))
        now = dict(zip(held, owners, strict=True))
        for identity in found:
            if identity.handle_lower is not None and now.get(identity.handle_lower) == identity.did:
                by_handle[identity.handle_lower] = identity
    return [
        (actor, (by_did if kind == "did" else by_handle).get(value))
        for actor, (kind, value) in zip(actors, keys, strict=True)
    ]


async def get_identity(pool: asyncpg.Pool, params: Params, resolve_handle: HandleResolver | None = None) -> Body:
    actor = params_mod.required(params, "actor")
    ((_, identity),) = await _lookup(pool, [actor], resolve_handle)
    if identity is None:
        raise XrpcError(400, "IdentityNotFound", f"No messaging identity found for {actor}")
    return identity_view(identity)


async def get_identities(pool: asyncpg.Pool, params: Params, resolve_handle: HandleResolver | None = None) -> Body:
    results = await _lookup(pool, params_mod.batch(params, "actors"), resolve_handle)
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


def _xmtp_env(params: Params) -> str | None:
    env = params_mod.one(params, "env")
    if env is not None and not (env.isascii() and env.isalnum() and len(env) <= 32):
        raise invalid_request("env must be an XMTP environment name such as production or dev")
    return env


async def resolve_xmtp_inbox(pool: asyncpg.Pool, params: Params) -> Body:
    inbox_id = params_mod.inbox_id(params_mod.required(params, "inboxId"))
    include_unverified = params_mod.boolean(params, "includeUnverified")
    env = _xmtp_env(params)
    found = await queries.resolve_xmtp_inboxes(pool, [inbox_id], include_unverified=include_unverified, env=env)
    return {"inboxId": inbox_id, "accounts": [inbox_account_view(b) for b in found.get(inbox_id, ())]}


async def resolve_xmtp_inboxes(pool: asyncpg.Pool, params: Params) -> Body:
    inbox_ids = [params_mod.inbox_id(value) for value in params_mod.batch(params, "inboxIds")]
    include_unverified = params_mod.boolean(params, "includeUnverified")
    env = _xmtp_env(params)
    found = await queries.resolve_xmtp_inboxes(pool, inbox_ids, include_unverified=include_unverified, env=env)
    return {
        "inboxes": [
            {"inboxId": inbox_id, "accounts": [inbox_account_view(b) for b in found.get(inbox_id, ())]}
            for inbox_id in inbox_ids
        ]
    }


async def list_bindings(pool: asyncpg.Pool, params: Params) -> Body:
    protocol = params_mod.required(params, "protocol")
    if protocol not in PROTOCOLS:
        raise invalid_request("protocol must be one of: " + ", ".join(PROTOCOLS))
    status = params_mod.one(params, "status") or None
    allowed = queries.PROTOCOL_STATUSES.get(protocol)
    if status is not None and allowed is not None and status not in allowed:
        raise invalid_request(f"status of a {protocol} binding must be one of: " + ", ".join(allowed))
    limit = params_mod.limit(params, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)
    raw_cursor = params_mod.one(params, "cursor")
    after_did, after_uri = _decode_list_cursor(raw_cursor) if raw_cursor else (None, None)
    # One row more than asked tells whether another page exists, so the last page has no cursor.
    rows = await queries.list_bindings(
        pool, protocol, after_did=after_did, after_uri=after_uri, limit=limit + 1, status=status
    )
    body: Body = {"bindings": [listed_binding_view(b) for b in rows[:limit]]}
    if len(rows) > limit:
        last = rows[limit - 1]
        body["cursor"] = _encode_list_cursor(last.did, None if protocol in ONE_RECORD_PROTOCOLS else last.uri)
    return body


def _encode_list_cursor(did: str, uri: str | None) -> str:
    # the last DID of the page, and its last URI where an account may have more records than
    # fit on one page (the DID alone is the cursor earlier versions gave)
    text = did if uri is None else f"{did} {uri}"
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode("ascii")


def _decode_list_cursor(cursor: str) -> tuple[str, str | None]:
    """(did, uri) from a listing cursor; a cursor of a DID alone (as earlier versions gave)
    means after every binding of that DID."""
    if len(cursor) > 8192:
        raise invalid_request("Malformed cursor")
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8")
    except (binascii.Error, ValueError):
        raise invalid_request("Malformed cursor") from None
    did, space, uri = text.partition(" ")
    if not is_did(did) or (space and (not uri.startswith(f"at://{did}/") or not uri.isprintable() or " " in uri)):
        raise invalid_request("Malformed cursor")
    return did, uri if space else None


async def get_index_status(pool: asyncpg.Pool, params: Params) -> Body:
    """Index size, firehose state, cursor and lag, and backfill progress: what the status page shows."""
    counts = await queries.get_index_counts(pool)
    health = await queries.get_health(pool)
    body: Body = {"accounts": counts.accounts, "bindings": binding_rows(counts), "state": health.state}
    if health.cursor is not None:
        body["cursor"] = health.cursor
    # lexicons have no floats
    if health.lag_seconds is not None:
        body["lagSeconds"] = max(0, round(health.lag_seconds))
    if health.idle_seconds is not None:
        body["idleSeconds"] = max(0, round(health.idle_seconds))
    progress = await backfill_status(pool)
    if progress["repos"] or progress["resyncQueue"]:  # as in _health: only once a backfill was asked for
        body["backfill"] = progress
    return body


async def health(pool_provider: Callable[[], asyncpg.Pool], version: str) -> tuple[int, Body]:
    """(HTTP status, body) for /xrpc/_health; any database failure is a 503, never a 500."""
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT):
            state = await queries.get_health(pool_provider())
    except Exception:
        return 503, {"version": version, "error": "DatabaseUnavailable"}
    body: Body = {
        "version": version,
        "state": state.state,
        "cursor": state.cursor,
        "lagSeconds": state.lag_seconds,
        "idleSeconds": state.idle_seconds,
    }
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT):
            progress = await backfill_status(pool_provider())
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
    f"{NS}.getBindingProof": get_binding_proof,
    f"{NS}.getBindingHistory": get_binding_history,
    f"{NS}.checkMlsDevice": check_mls_device,
}


def methods(resolve_handle: HandleResolver | None) -> Mapping[str, Handler]:
    """The method table a server uses: lookups by handle confirmed through `resolve_handle`."""
    if resolve_handle is None:
        return METHODS
    return {
        **METHODS,
        f"{NS}.getIdentity": functools.partial(get_identity, resolve_handle=resolve_handle),
        f"{NS}.getIdentities": functools.partial(get_identities, resolve_handle=resolve_handle),
    }
