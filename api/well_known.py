"""`/.well-known/did.json`: atmx's did:web document, so PDSes can proxy to it.

A client sends `atproto-proxy: <service DID>#atmx_directory`; the PDS fetches this document,
takes the endpoint of the service entry with that id, and forwards the call there with an
inter-service JWT (checked by api/auth.py). atmx signs nothing itself, so the document
carries no verification method.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from atmx.api.auth import SERVICE_ID

SERVICE_TYPE = "AtmxDirectory"
DID_CONTEXT = ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"]


def did_document(service_did: str, endpoint: str) -> dict[str, Any]:
    return {
        "@context": DID_CONTEXT,
        "id": service_did,
        "service": [{"id": f"#{SERVICE_ID}", "type": SERVICE_TYPE, "serviceEndpoint": endpoint}],
    }


def did_json_handler(service_did: str, endpoint: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    # The document never changes while the process runs: encode it once.
    body = json.dumps(did_document(service_did, endpoint), separators=(",", ":")).encode()

    async def handler(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json", headers={"Cache-Control": "max-age=300"})

    return handler
