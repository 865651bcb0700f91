"""api/openapi.py: the OpenAPI document generated from the lexicons, and /openapi.json."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from atmx.api.app import create_app
from atmx.api.handlers import METHODS
from atmx.api.openapi import build_openapi, load_lexicons, openapi_document, schema


def test_every_query_lexicon_is_an_operation_and_every_method_has_one() -> None:
    doc = openapi_document("1.2.3")
    lexicons = load_lexicons()
    queries = {nsid for nsid, lex in lexicons.items() if lex["defs"].get("main", {}).get("type") == "query"}
    procedures = {nsid for nsid, lex in lexicons.items() if lex["defs"].get("main", {}).get("type") == "procedure"}
    assert set(doc["paths"]) == {f"/xrpc/{nsid}" for nsid in queries | procedures}
    assert procedures == {"directory.atmx.requestIndex"}
    assert "requestBody" in doc["paths"]["/xrpc/directory.atmx.requestIndex"]["post"]
    assert set(METHODS) <= queries
    assert doc["openapi"].startswith("3.") and doc["info"]["version"] == "1.2.3"


def test_params_limits_and_refs_follow_the_lexicon() -> None:
    doc = openapi_document("x")
    op = doc["paths"]["/xrpc/directory.atmx.getIdentities"]["get"]
    (actors,) = op["parameters"]
    assert actors["required"] is True and actors["explode"] is True
    assert actors["schema"]["minItems"] == 1 and actors["schema"]["maxItems"] == 100
    ok = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["properties"]["identities"]["items"] == {"$ref": "#/components/schemas/directory.atmx.defs.identity"}
    listing = doc["paths"]["/xrpc/directory.atmx.listBindings"]["get"]
    limit = next(p for p in listing["parameters"] if p["name"] == "limit")
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}
    for status in ("400", "429", "503"):
        error = op["responses"][status]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/XrpcError"}
    assert doc["components"]["schemas"]["XrpcError"]["required"] == ["error", "message"]


def test_every_ref_resolves() -> None:
    doc = openapi_document("x")
    names = set(doc["components"]["schemas"])

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if "$ref" in node else []
            return own + [r for value in node.values() for r in refs(value)]
        if isinstance(node, list):
            return [r for value in node for r in refs(value)]
        return []

    found = refs(doc)
    assert found
    for ref in found:
        assert ref.removeprefix("#/components/schemas/") in names, ref


def test_schema_mapping_of_lexicon_types() -> None:
    assert schema("a.b", {"type": "ref", "ref": "#x"}) == {"$ref": "#/components/schemas/a.b.x"}
    assert schema("a.b", {"type": "ref", "ref": "c.d"}) == {"$ref": "#/components/schemas/c.d"}
    assert schema("a.b", {"type": "string", "format": "datetime"}) == {"type": "string", "format": "date-time"}
    assert schema("a.b", {"type": "string", "format": "did", "knownValues": ["x"]}) == {
        "type": "string",
        "format": "did",
        "x-known-values": ["x"],
    }
    assert schema("a.b", {"type": "union", "refs": ["#x"]}) == {"oneOf": [{"$ref": "#/components/schemas/a.b.x"}]}
    assert schema("a.b", {"type": "unknown"}) == {}
    doc = build_openapi({"a.b": {"id": "a.b", "defs": {"main": {"type": "query"}}}}, "v")
    assert doc["paths"]["/xrpc/a.b"]["get"]["parameters"] == []


async def test_served_at_openapi_json(db_pool: asyncpg.Pool) -> None:
    async with TestClient(TestServer(create_app(pool_provider=lambda: db_pool, version="7.7.7"))) as client:
        resp = await client.get("/openapi.json")
        assert resp.status == 200 and resp.content_type == "application/json"
        assert await resp.json() == openapi_document("7.7.7")


def test_germ_catbird_and_check_mls_device_are_documented() -> None:
    doc = openapi_document("x")
    check = doc["paths"]["/xrpc/directory.atmx.checkMlsDevice"]["get"]
    assert {(p["name"], p["required"]) for p in check["parameters"]} == {("did", True), ("key", True)}
    ok = check["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["properties"]["device"]["$ref"] == "#/components/schemas/directory.atmx.defs.catbirdDevice"
    schemas = doc["components"]["schemas"]
    identity = schemas["directory.atmx.defs.identity"]["properties"]
    assert identity["germ"]["$ref"] == "#/components/schemas/directory.atmx.defs.germBinding"
    assert identity["catbird"]["$ref"] == "#/components/schemas/directory.atmx.defs.catbirdIdentity"
    listing = doc["paths"]["/xrpc/directory.atmx.listBindings"]["get"]
    protocol = next(p for p in listing["parameters"] if p["name"] == "protocol")
    assert protocol["schema"]["x-known-values"] == ["xmtp", "didcomm", "germ", "catbird"]
