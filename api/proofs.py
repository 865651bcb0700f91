"""`getBindingProof` and `getBindingHistory`: what atmx saw, in a form anyone can check.

The proof is the CAR atmx verified (the signed commit, the MST nodes on the record's path and
the record block: the shape `com.atproto.sync.getRecord` returns), so any atproto library can
check the answer without trusting atmx. Its metadata travel in response headers.
"""

from __future__ import annotations

from typing import Final

import asyncpg

from atmx.api import params as params_mod
from atmx.api.bodies import Body
from atmx.api.errors import XrpcError, invalid_request
from atmx.api.params import Params
from atmx.api.responses import Blob
from atmx.indexer.records.registry import PROTOCOLS
from atmx.indexer.records.stored import iso_time
from atmx.indexer.repo.syntax import is_did, is_nsid, is_record_key
from atmx.indexer.store import provenance

__all__ = ["PROOF_HEADERS", "get_binding_history", "get_binding_proof"]

CAR_TYPE: Final = "application/vnd.ipld.car"
PROOF_HEADERS: Final = ("Atmx-Rev", "Atmx-Cid", "Atmx-Pds", "Atmx-Signing-Key", "Atmx-Observed-At")
DEFAULT_HISTORY_LIMIT: Final = 50
MAX_HISTORY_LIMIT: Final = 500


def _uri(value: str) -> str:
    """`at://<did>/<collection>/<rkey>`, nothing else."""
    rest = value.removeprefix("at://")
    parts = rest.split("/")
    if not value.startswith("at://") or len(parts) != 3:
        raise invalid_request("uri must be at://<did>/<collection>/<rkey>")
    did, collection, rkey = parts
    if not is_did(did) or not is_nsid(collection) or not is_record_key(rkey):
        raise invalid_request("uri must be at://<did>/<collection>/<rkey>")
    return value


async def get_binding_proof(pool: asyncpg.Pool, params: Params) -> Blob:
    uri = _uri(params_mod.required(params, "uri"))
    proof = await provenance.get_proof(pool, uri)
    if proof is None:
        raise XrpcError(400, "ProofNotFound", f"No proven binding at {uri}")
    headers = {
        "Atmx-Rev": proof.rev,
        "Atmx-Cid": proof.cid,
        "Atmx-Observed-At": iso_time(proof.observed_at),
        "Access-Control-Expose-Headers": ", ".join(PROOF_HEADERS),
    }
    if proof.pds is not None:
        headers["Atmx-Pds"] = proof.pds
    if proof.signing_key is not None:
        headers["Atmx-Signing-Key"] = proof.signing_key
    return Blob(proof.car, CAR_TYPE, headers)


async def get_binding_history(pool: asyncpg.Pool, params: Params) -> Body:
    did = params_mod.required(params, "did")
    if not is_did(did):
        raise invalid_request("did must be a DID")
    protocol = params_mod.one(params, "protocol")
    if protocol is not None and protocol not in PROTOCOLS:
        raise invalid_request("protocol must be one of: " + ", ".join(PROTOCOLS))
    limit = params_mod.limit(params, DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT)
    raw_cursor = params_mod.one(params, "cursor")
    before = None
    if raw_cursor is not None:
        if not raw_cursor.isascii() or not raw_cursor.isdigit() or len(raw_cursor) > 18:
            raise invalid_request("Malformed cursor")
        before = int(raw_cursor)
    rows = await provenance.get_history(pool, did, protocol, before_id=before, limit=limit + 1)
    versions: list[Body] = []
    for v in rows[:limit]:
        version: Body = {
            "uri": v.uri,
            "protocol": v.protocol,
            "rev": v.rev,
            "action": v.action,
            "status": v.status,
            "observedAt": iso_time(v.observed_at),
        }
        if v.cid is not None:
            version["cid"] = v.cid
        if v.reason is not None:
            version["reason"] = v.reason
        if v.projection is not None:
            version["binding"] = v.projection
        versions.append(version)
    body: Body = {"did": did, "versions": versions}
    if len(rows) > limit:
        body["cursor"] = str(rows[limit - 1].id)
    return body
