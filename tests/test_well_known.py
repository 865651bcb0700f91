"""`/.well-known/did.json` and the ATMX_SERVICE_DID / ATMX_SERVICE_ENDPOINT settings."""

from __future__ import annotations

import socket

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from atmx.api.app import create_app, run_api
from atmx.api.auth import SERVICE_ID
from atmx.api.well_known import did_document
from atmx.indexer.config import ConfigError, default_service_endpoint, from_env, service_did_host
from atmx.indexer.identity.resolver import IdentityResolver

DID = "did:web:directory.example.com"


def no_pool() -> asyncpg.Pool:
    raise AssertionError("the DID document must not touch the database")


def test_document_shape() -> None:
    doc = did_document(DID, "https://directory.example.com")
    assert doc == {
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
        "id": DID,
        "service": [
            {"id": "#atmx_directory", "type": "AtmxDirectory", "serviceEndpoint": "https://directory.example.com"}
        ],
    }


async def test_served_only_with_a_service_did() -> None:
    app = create_app(pool_provider=no_pool, version="1", service_did=DID, service_endpoint="https://api.example.com")
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/.well-known/did.json")
        assert resp.status == 200 and resp.content_type == "application/json"
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        body = await resp.json()
        assert body["id"] == DID
        assert body["service"][0]["serviceEndpoint"] == "https://api.example.com"
    async with TestClient(TestServer(create_app(pool_provider=no_pool, version="1"))) as client:
        resp = await client.get("/.well-known/did.json")
        assert resp.status == 404 and (await resp.json())["error"] == "NotFound"


async def test_resolvable_by_a_did_web_resolver() -> None:
    # atmx's own resolver fetches did:web:localhost%3A<port> the way a PDS in dev mode does.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    did = f"did:web:localhost%3A{port}"
    settings = from_env({"ATMX_SERVICE_DID": did})
    assert settings.service_endpoint == f"http://localhost:{port}"
    app = create_app(pool_provider=no_pool, version="1", service_did=did, service_endpoint=settings.service_endpoint)
    runner = await run_api(app, "127.0.0.1", port)
    try:
        async with IdentityResolver(allow_insecure_http=True) as resolver:
            info = await resolver.resolve_did(did)
        assert info.did == did and info.signing_key is None and info.pds is None
    finally:
        await runner.cleanup()


# --- settings ------------------------------------------------------------------------------


def test_settings() -> None:
    assert from_env({}).service_did is None and from_env({}).service_endpoint is None
    s = from_env({"ATMX_SERVICE_DID": DID})
    assert (s.service_did, s.service_endpoint) == (DID, "https://directory.example.com")
    s = from_env({"ATMX_SERVICE_DID": DID, "ATMX_SERVICE_ENDPOINT": "https://api.example.com/"})
    assert s.service_endpoint == "https://api.example.com"
    assert service_did_host("did:web:localhost%3a8080") == "localhost:8080"
    assert default_service_endpoint("did:web:localhost") == "http://localhost"


@pytest.mark.parametrize(
    "did",
    [
        "did:plc:abcdefghijklmnopqrstuvwx",  # not did:web
        "did:web:example.com:path",  # atproto forbids paths
        "did:web:example.com%3A8443",  # ports only on localhost
        "did:web:localhost%3Ahttp",
        "did:web:localhost%3A99999",
        "did:web:nodot",
        "did:web:Directory.Example.com",
        "did:web:exa_mple.com",
        "did:web:",
    ],
)
def test_bad_service_dids(did: str) -> None:
    with pytest.raises(ConfigError):
        from_env({"ATMX_SERVICE_DID": did})


@pytest.mark.parametrize("endpoint", ["ftp://x.example", "x.example", "https://x.example/xrpc", "https://"])
def test_bad_service_endpoints(endpoint: str) -> None:
    with pytest.raises(ConfigError):
        from_env({"ATMX_SERVICE_DID": DID, "ATMX_SERVICE_ENDPOINT": endpoint})


def test_endpoint_without_did() -> None:
    with pytest.raises(ConfigError, match="needs ATMX_SERVICE_DID"):
        from_env({"ATMX_SERVICE_ENDPOINT": "https://x.example"})


def test_service_id_is_stable() -> None:
    assert SERVICE_ID == "atmx_directory"  # PDS clients address it in atproto-proxy; never rename
