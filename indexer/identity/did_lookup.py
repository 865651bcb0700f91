"""One network lookup of a DID document: where it lives (did:plc at the PLC directory, did:web at
its own host) and what an HTTP answer means. What to cache and for how long is resolver.py's."""

from __future__ import annotations

import json
import re
from typing import Any, Final, Protocol

from atmx.indexer.identity.diddoc import DidDocError, DidInfo, parse_did_document
from atmx.indexer.identity.http import FetchFailed
from atmx.indexer.repo.syntax import is_did, is_handle

__all__ = [
    "DEFAULT_PLC",
    "TRANSIENT_STATUSES",
    "Fetched",
    "Getter",
    "ResolutionError",
    "did_document_url",
    "fetch_did_document",
]

DEFAULT_PLC: Final = "https://plc.directory"
MAX_DID_DOC: Final = 1 << 20
# Statuses that say "try again later" rather than "no such thing".
TRANSIENT_STATUSES: Final = frozenset({408, 425, 429})

_PLC_RE: Final = re.compile(r"did:plc:[a-z2-7]{24}")


class ResolutionError(ValueError):
    """`reason`: not_found, unreachable, bad_document, forbidden_address, unsupported_did_method, invalid_did."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Getter(Protocol):
    """GET `url` with a body cap; `stranger`: the host came from someone else's data. Raises FetchFailed."""

    async def __call__(self, url: str, limit: int, *, stranger: bool) -> tuple[int, bytes]: ...


class Fetched:
    """Outcome of one network lookup; never raises past fetch_did_document."""

    __slots__ = ("doc", "info", "message", "reason")

    def __init__(
        self, reason: str, message: str = "", info: DidInfo | None = None, doc: dict[str, Any] | None = None
    ) -> None:
        self.reason = reason  # "ok" or a ResolutionError reason
        self.message = message
        self.info = info
        self.doc = doc


def did_document_url(did: str, plc_url: str, *, allow_insecure_http: bool = False) -> str:
    """Where `did`'s document is served; ResolutionError for a malformed or unsupported DID."""
    if did.startswith("did:plc:"):
        if not _PLC_RE.fullmatch(did):
            raise ResolutionError("invalid_did", f"malformed did:plc {did[:100]!r}")
        return f"{plc_url}/{did}"
    if did.startswith("did:web:"):
        return _did_web_url(did, allow_insecure_http)
    if not is_did(did):
        raise ResolutionError("invalid_did", f"malformed DID {did[:100]!r}")
    raise ResolutionError("unsupported_did_method", f"unsupported DID method in {did[:100]!r}")


def _did_web_url(did: str, allow_insecure_http: bool) -> str:
    rest = did[len("did:web:") :]
    if ":" in rest:
        raise ResolutionError("unsupported_did_method", "did:web with a path is not allowed in atproto")
    host, _, port = rest.replace("%3a", "%3A").partition("%3A")
    host = host.lower()
    localhost = host == "localhost"
    if not (localhost or is_handle(host)):
        raise ResolutionError("invalid_did", f"did:web host {host[:100]!r} is not a hostname")
    if port and not (localhost and port.isdigit() and port.isascii() and 0 < int(port) < 65536):
        raise ResolutionError("invalid_did", "did:web ports are only allowed for localhost")
    scheme = "http" if localhost and allow_insecure_http else "https"
    return f"{scheme}://{host}{':' + port if port else ''}/.well-known/did.json"


async def fetch_did_document(get: Getter, did: str, url: str) -> Fetched:
    """Fetch and parse `did`'s document from `url`; every failure is an outcome, not an exception."""
    try:
        # did:web names its own host; did:plc goes to the operator's PLC directory
        status, body = await get(url, MAX_DID_DOC, stranger=did.startswith("did:web:"))
    except FetchFailed as exc:
        return Fetched(exc.reason, f"{url}: {exc}")
    if status in (404, 410):
        return Fetched("not_found", f"{url}: HTTP {status}")
    if status >= 500 or status in TRANSIENT_STATUSES:
        return Fetched("unreachable", f"{url}: HTTP {status}")
    if status >= 400:
        return Fetched("not_found", f"{url}: HTTP {status}")
    if status != 200:
        return Fetched("bad_document", f"{url}: HTTP {status}")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return Fetched("bad_document", f"{url}: not JSON")
    if not isinstance(doc, dict):
        return Fetched("bad_document", f"{url}: not a JSON object")
    try:
        info = parse_did_document(did, doc)
    except DidDocError as exc:
        return Fetched("bad_document", f"{url}: {exc.reason}: {exc}")
    return Fetched("ok", info=info, doc=doc)
