"""indexer/identity/did_lookup.py: where a DID document lives and what an HTTP answer means.

The resolver's caching around these lookups is test_resolver.py's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from atmx.indexer.identity.did_lookup import (
    DEFAULT_PLC,
    TRANSIENT_STATUSES,
    ResolutionError,
    did_document_url,
    fetch_did_document,
)
from atmx.indexer.identity.http import FetchFailed

DID_DOCS: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).parent / "fixtures" / "devnet-frames" / "did-docs.json").read_text()
)
ALICE = "did:plc:nbcjflbg4exvv7izplf43elu"


@pytest.mark.parametrize(
    ("did", "insecure", "url"),
    [
        (ALICE, False, f"{DEFAULT_PLC}/{ALICE}"),
        ("did:web:example.com", False, "https://example.com/.well-known/did.json"),
        ("did:web:Example.COM", False, "https://example.com/.well-known/did.json"),
        ("did:web:localhost%3A2583", True, "http://localhost:2583/.well-known/did.json"),
        ("did:web:localhost%3a2583", False, "https://localhost:2583/.well-known/did.json"),
    ],
)
def test_document_urls(did: str, insecure: bool, url: str) -> None:
    assert did_document_url(did, DEFAULT_PLC, allow_insecure_http=insecure) == url


@pytest.mark.parametrize(
    ("did", "reason"),
    [
        ("did:plc:short", "invalid_did"),
        ("did:plc:" + "A" * 24, "invalid_did"),  # upper case is not base32
        ("did:web:example.com:path", "unsupported_did_method"),
        ("did:web:example.com%3A8080", "invalid_did"),  # ports only for localhost
        ("did:web:localhost%3A0", "invalid_did"),
        ("did:web:not_a_host", "invalid_did"),
        ("did:key:zQ3shZc2QzApp2oymGvQbzP8eKheVshBHbU4ZYjeXqwSKEn6N", "unsupported_did_method"),
        ("not a did", "invalid_did"),
    ],
)
def test_refused_dids(did: str, reason: str) -> None:
    with pytest.raises(ResolutionError) as e:
        did_document_url(did, DEFAULT_PLC)
    assert e.value.reason == reason


class Answer:
    """A Getter that answers one status and body, and notes how it was asked."""

    def __init__(self, status: int = 200, body: bytes = b"", fail: str | None = None) -> None:
        self.status, self.body, self.fail = status, body, fail
        self.calls: list[tuple[str, int, bool]] = []

    async def __call__(self, url: str, limit: int, *, stranger: bool) -> tuple[int, bytes]:
        self.calls.append((url, limit, stranger))
        if self.fail is not None:
            raise FetchFailed(self.fail, "no")
        return self.status, self.body


async def test_a_good_document() -> None:
    get = Answer(body=json.dumps(DID_DOCS[ALICE]).encode())
    fetched = await fetch_did_document(get, ALICE, "https://plc.test/x")
    assert fetched.reason == "ok" and fetched.info is not None and fetched.info.did == ALICE
    assert fetched.doc == DID_DOCS[ALICE]
    assert get.calls == [("https://plc.test/x", 1 << 20, False)]  # the PLC is the operator's, not a stranger


async def test_did_web_hosts_are_strangers() -> None:
    get = Answer(status=404)
    await fetch_did_document(get, "did:web:example.com", "https://example.com/.well-known/did.json")
    assert get.calls[0][2] is True


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (404, b"", "not_found"),
        (410, b"", "not_found"),
        (403, b"", "not_found"),
        (500, b"", "unreachable"),
        (503, b"", "unreachable"),
        *((status, b"", "unreachable") for status in sorted(TRANSIENT_STATUSES)),
        (204, b"", "bad_document"),
        (200, b"{not json", "bad_document"),
        (200, b"[1, 2]", "bad_document"),
        (200, json.dumps({"id": "did:plc:other"}).encode(), "bad_document"),
    ],
)
async def test_answers(status: int, body: bytes, reason: str) -> None:
    fetched = await fetch_did_document(Answer(status, body), ALICE, "https://plc.test/x")
    assert fetched.reason == reason and fetched.info is None
    assert "https://plc.test/x" in fetched.message


@pytest.mark.parametrize("failure", ["unreachable", "forbidden_address"])
async def test_failed_fetches_keep_their_reason(failure: str) -> None:
    fetched = await fetch_did_document(Answer(fail=failure), ALICE, "https://plc.test/x")
    assert fetched.reason == failure
