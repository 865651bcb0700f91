"""api/devices.py: the `key` parameter of checkMlsDevice and which collections authorise a key.

The answers against a database are test_handlers.py's; these are the parts that need none.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from multidict import MultiDict

from atmx.api.devices import AUTHORIZING_COLLECTIONS, MAX_KEY_CHARS, check_mls_device, parse_key
from atmx.api.errors import XrpcError

KEY = bytes(range(1, 66))  # 65 bytes: the longest key (uncompressed P-256)


def test_only_current_catbird_device_records_authorise() -> None:
    assert AUTHORIZING_COLLECTIONS == ("blue.catbird.chat.device",)


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(KEY).decode(),  # standard, padded
        base64.b64encode(KEY).decode().rstrip("="),
        base64.urlsafe_b64encode(KEY).decode().rstrip("="),
        base64.b64encode(KEY).decode().replace("+", " "),  # a '+' left unescaped in a query string
    ],
)
def test_base64_in_any_common_form(text: str) -> None:
    assert parse_key(text) == KEY


@pytest.mark.parametrize("text", ["", "not base64!", "A", "AAAAA", "A" * (MAX_KEY_CHARS + 4), "AA==="])
def test_not_a_key(text: str) -> None:
    with pytest.raises(XrpcError) as e:
        parse_key(text)
    assert (e.value.status, e.value.name) == (400, "InvalidRequest")


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"key": "AAAA"}, "did"),
        ({"did": "not-a-did", "key": "AAAA"}, "not a DID"),
        ({"did": "did:plc:abc"}, "key"),
    ],
)
async def test_bad_parameters_are_refused_before_any_query(params: dict[str, str], fragment: str) -> None:
    pool: Any = None  # never reached
    with pytest.raises(XrpcError) as e:
        await check_mls_device(pool, MultiDict(params))
    assert e.value.status == 400 and fragment in e.value.message
