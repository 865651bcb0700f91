"""An OpenAPI 3.1 document generated from the lexicons in api/lexicons/, served at /openapi.json.

The lexicons stay the source of truth: every `query` becomes a GET /xrpc/<nsid> operation, its
params become query parameters (arrays repeat the name, as XRPC does), its output the 200 schema,
and every error answers the XRPC form `{error, message}`. Pure: JSON in, JSON out.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LEXICON_DIR = Path(__file__).parent / "lexicons"
Json = dict[str, Any]

# atproto string formats with a JSON Schema equivalent; the others keep their atproto name
# (OpenAPI formats are an open set: validators ignore names they do not know).
_FORMATS = {"datetime": "date-time", "uri": "uri"}
_ERROR_REF = {"$ref": "#/components/schemas/XrpcError"}
_ERROR_STATUSES = {
    "400": "Invalid request, or a named error of this method",
    "429": "Rate limit exceeded (RateLimitExceeded; see Retry-After)",
    "503": "The index database is unavailable (DatabaseUnavailable); retry with backoff",
}
_ERROR_SCHEMA: Json = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
}


def load_lexicons(directory: Path = LEXICON_DIR) -> dict[str, Json]:
    docs = (json.loads(path.read_text()) for path in sorted(directory.glob("*.json")))
    return {doc["id"]: doc for doc in docs}


def component_name(nsid: str, name: str) -> str:
    # OpenAPI component names allow [A-Za-z0-9._-], so `#` becomes a dot.
    return nsid if name == "main" else f"{nsid}.{name}"


def _ref(nsid: str, ref: str) -> Json:
    target, _, name = ref.partition("#")
    return {"$ref": f"#/components/schemas/{component_name(target or nsid, name or 'main')}"}


def schema(nsid: str, lex: Mapping[str, Any]) -> Json:
    """One lexicon type -> a JSON Schema; `nsid` resolves local refs (`#name`)."""
    kind = lex.get("type")
    out: Json = {}
    if "description" in lex:
        out["description"] = lex["description"]
    if kind == "ref":
        return _ref(nsid, lex["ref"]) | out
    if kind == "union":
        out["oneOf"] = [_ref(nsid, ref) for ref in lex.get("refs", [])]
        return out
    if kind == "object" or kind == "params":
        out["type"] = "object"
        out["properties"] = {key: schema(nsid, value) for key, value in lex.get("properties", {}).items()}
        if lex.get("required"):
            out["required"] = list(lex["required"])
        return out
    if kind == "array":
        out["type"] = "array"
        out["items"] = schema(nsid, lex.get("items", {}))
        for ours, theirs in (("minLength", "minItems"), ("maxLength", "maxItems")):
            if ours in lex:
                out[theirs] = lex[ours]
        return out
    if kind == "string":
        out["type"] = "string"
        for key in ("minLength", "maxLength", "enum", "const", "default"):
            if key in lex:
                out[key] = lex[key]
        if "format" in lex:
            fmt = lex["format"]
            out["format"] = _FORMATS.get(fmt, fmt)
        if "knownValues" in lex:  # an open set: documented, not enforced
            out["x-known-values"] = list(lex["knownValues"])
        return out
    if kind in ("integer", "boolean"):
        out["type"] = kind
        for key in ("minimum", "maximum", "enum", "const", "default"):
            if key in lex:
                out[key] = lex[key]
        return out
    return out  # unknown, blob, bytes, cid-link: anything


def _parameters(nsid: str, params: Mapping[str, Any]) -> list[Json]:
    required = set(params.get("required", []))
    out = []
    for name, lex in params.get("properties", {}).items():
        param: Json = {"name": name, "in": "query", "required": name in required, "schema": schema(nsid, lex)}
        if lex.get("type") == "array":
            param |= {"style": "form", "explode": True}
        if "description" in lex:
            param["description"] = lex["description"]
        out.append(param)
    return out


def _operation(nsid: str, main: Mapping[str, Any]) -> Json:
    errors = ", ".join(error["name"] for error in main.get("errors", []))
    output = main.get("output", {})
    ok: Json = {"description": "OK"}
    if "schema" in output:
        ok["content"] = {output.get("encoding", "application/json"): {"schema": schema(nsid, output["schema"])}}
    responses: Json = {"200": ok}
    for status, text in _ERROR_STATUSES.items():
        description = f"{text}. Named errors: {errors}" if status == "400" and errors else text
        responses[status] = {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}
    return {
        "operationId": nsid,
        "summary": main.get("description", nsid),
        "parameters": _parameters(nsid, main.get("parameters", {})),
        "responses": responses,
    }


def build_openapi(lexicons: Mapping[str, Json], version: str) -> Json:
    paths: Json = {}
    components: Json = {"XrpcError": _ERROR_SCHEMA}
    for nsid, doc in sorted(lexicons.items()):
        for name, lex in doc.get("defs", {}).items():
            if lex.get("type") == "query":
                paths[f"/xrpc/{nsid}"] = {"get": _operation(nsid, lex)}
            elif lex.get("type") == "procedure":
                operation = _operation(nsid, lex)
                body = lex.get("input", {})
                if "schema" in body:
                    operation["requestBody"] = {
                        "required": True,
                        "content": {body.get("encoding", "application/json"): {"schema": schema(nsid, body["schema"])}},
                    }
                paths[f"/xrpc/{nsid}"] = {"post": operation}
            # a subscription is a websocket, which OpenAPI cannot describe: its lexicon is served as is
            elif lex.get("type") in ("object", "string", "array", "union", "integer", "boolean"):
                components[component_name(nsid, name)] = schema(nsid, lex)
            elif lex.get("type") == "record":
                components[component_name(nsid, name)] = schema(nsid, lex["record"])
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "atmx directory API",
            "version": version,
            "description": "Generated from the atmx lexicons (api/lexicons/); errors use the XRPC form.",
        },
        "paths": paths,
        "components": {"schemas": components},
    }


@functools.lru_cache(maxsize=4)
def _cached(version: str) -> Json:
    return build_openapi(load_lexicons(), version)


def openapi_document(version: str) -> Json:
    return copy.deepcopy(_cached(version))  # callers may not mutate the shared copy
