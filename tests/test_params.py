"""api/params.py: XRPC query parameters."""

from __future__ import annotations

import pytest

from atmx.api import params
from atmx.api.errors import XrpcError


def test_cursor_round_trip_and_rejections() -> None:
    cursor = params.encode_cursor("did:web:example.com")
    assert "=" not in cursor and params.decode_cursor(cursor) == "did:web:example.com"
    for bad in ("%%%", "a", params.encode_cursor("hello"), "_w"):
        with pytest.raises(XrpcError) as info:
            params.decode_cursor(bad)
        assert info.value.status == 400 and info.value.name == "InvalidRequest"
