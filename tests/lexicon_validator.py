"""The method lexicons in api/lexicons, loaded, and a small validator for the lexicon types the
API uses (object, string, integer, boolean, bytes, array, ref): `validate_output` checks a
method's answer against its lexicon."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from importlib import resources
from typing import Any

from atmx.indexer.records.datamodel import is_uri
from atmx.indexer.repo.syntax import is_did, is_handle

Lexicon = dict[str, Any]
NSID_RE = re.compile(r"[a-z]+(\.[a-z][a-zA-Z0-9]*)+")


def load_lexicons() -> dict[str, Lexicon]:
    folder = resources.files("atmx.api").joinpath("lexicons")
    docs: dict[str, Lexicon] = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".json"):
            doc = json.loads(entry.read_text(encoding="utf-8"))
            assert entry.name == f"{doc['id']}.json"
            docs[doc["id"]] = doc
    return docs


LEXICONS = load_lexicons()


def resolve(ref: str, current: str) -> tuple[dict[str, Any], str]:
    nsid, _, name = ref.partition("#")
    nsid = nsid or current
    return LEXICONS[nsid]["defs"][name or "main"], nsid


_FORMATS: dict[str, Callable[[str], bool]] = {
    "did": is_did,
    "handle": is_handle,
    "at-identifier": lambda v: is_did(v) or is_handle(v),
    "at-uri": lambda v: v.startswith("at://"),
    "uri": is_uri,
    "cid": lambda v: re.fullmatch(r"b[a-z2-7]+", v) is not None,
    "datetime": lambda v: (
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", v) is not None
        and datetime.fromisoformat(v) is not None
    ),
}


def validate(value: Any, schema: dict[str, Any], nsid: str, path: str = "$") -> None:
    """Raise AssertionError naming the path of the first mismatch."""
    kind = schema["type"]
    if kind == "ref":
        target, target_nsid = resolve(schema["ref"], nsid)
        validate(value, target, target_nsid, path)
    elif kind == "object":
        assert isinstance(value, dict), f"{path}: expected object"
        for key in schema.get("required", []):
            assert key in value, f"{path}: missing {key}"
        props = schema.get("properties", {})
        for key, item in value.items():
            assert key in props, f"{path}: unexpected {key}"
            validate(item, props[key], nsid, f"{path}.{key}")
    elif kind == "array":
        assert isinstance(value, list), f"{path}: expected array"
        assert schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)), path
        for i, item in enumerate(value):
            validate(item, schema["items"], nsid, f"{path}[{i}]")
    elif kind == "string":
        assert isinstance(value, str), f"{path}: expected string"
        assert schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)), path
        if "format" in schema:
            assert _FORMATS[schema["format"]](value), f"{path}: not a {schema['format']}: {value!r}"
    elif kind == "integer":
        assert isinstance(value, int) and not isinstance(value, bool), f"{path}: expected integer"
    elif kind == "boolean":
        assert isinstance(value, bool), f"{path}: expected boolean"
    elif kind == "bytes":  # JSON form: {"$bytes": unpadded standard base64}
        assert isinstance(value, dict) and set(value) == {"$bytes"}, f"{path}: expected bytes"
        assert re.fullmatch(r"[A-Za-z0-9+/]*", value["$bytes"]) and len(value["$bytes"]) % 4 != 1, path
    else:
        raise AssertionError(f"{path}: validator does not support type {kind}")


def validate_output(method: str, body: Any) -> None:
    validate(body, LEXICONS[method]["defs"]["main"]["output"]["schema"], method)
