"""Inter-service JWTs from PDSes proxying `directory.atmx.*` calls (`atproto-proxy` header).

A PDS forwarding a user's call signs a short JWT with the user's `#atproto` key:
`iss` = user DID, `aud` = our service DID (bare, or with `#atmx_directory`), `lxm` = the
called NSID, `exp` about a minute ahead. The parsing and claim checks below are pure; the
signature check needs the issuer's key, which `ServiceAuth` gets from the `IdentityResolver`.

Lookups are public, so a request without a token is served as usual; a request WITH a token
that fails any check is refused (401), because the caller asked to be authenticated.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from atmx.indexer.identity.resolver import IdentityResolver, ResolutionError
from atmx.indexer.repo.crypto import KeyParseError, PublicKey, key_from_did_key
from atmx.indexer.repo.syntax import is_did

__all__ = [
    "SERVICE_ID",
    "AuthError",
    "Jwt",
    "ServiceAuth",
    "auth_middleware",
    "check_claims",
    "parse_jwt",
    "verify_signature",
]

log = logging.getLogger(__name__)

SERVICE_ID = "atmx_directory"  # the `#fragment` of our service entry; keep stable, PDSes address it
CLOCK_SKEW = 30.0  # seconds of disagreement tolerated between the PDS's clock and ours
MAX_LIFETIME = 3600.0  # getServiceAuth grants at most an hour; anything longer is not a PDS token
MAX_TOKEN = 8192  # a service JWT is ~400 bytes; this bounds the work done on junk
ALG_CURVES = {"ES256K": "k256", "ES256": "p256"}
# Token types meant for other audiences (access/refresh/DPoP): never accepted as service auth.
_FOREIGN_TYPES = frozenset({"at+jwt", "refresh+jwt", "dpop+jwt"})

REQUEST_ISSUER = web.RequestKey("atmx_auth_issuer", str)  # request[...]: the authenticated caller's DID


class AuthError(ValueError):
    """A refused token. `name` is the XRPC error name (401), as the reference xrpc-server names them."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


@dataclass(frozen=True, slots=True)
class Jwt:
    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes  # `<header>.<payload>` as sent: what the signature covers
    signature: bytes

    @property
    def alg(self) -> str:
        return str(self.header["alg"])

    @property
    def issuer(self) -> str:
        return str(self.payload["iss"])


def _b64url(part: str) -> bytes:
    # JWTs use unpadded base64url; refuse padding and stray characters rather than guess.
    if "=" in part or not part.isascii():
        raise binascii.Error("padded or non-ascii")
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _json_object(part: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64url(part))
    except (binascii.Error, ValueError, RecursionError):
        raise AuthError("BadJwt", f"jwt {what} is not base64url JSON") from None
    if not isinstance(value, dict):
        raise AuthError("BadJwt", f"jwt {what} is not a JSON object")
    return value


def parse_jwt(token: str) -> Jwt:
    """Split and decode a compact JWS; checks shape and `alg`, not claims or signature."""
    if len(token) > MAX_TOKEN:
        raise AuthError("BadJwt", "jwt too long")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise AuthError("BadJwt", "poorly formatted jwt")
    header = _json_object(parts[0], "header")
    payload = _json_object(parts[1], "payload")
    alg = header.get("alg")
    if alg not in ALG_CURVES:  # also refuses "none" and HMAC algorithms
        raise AuthError("BadJwt", f"unsupported jwt alg {str(alg)[:20]!r}: expected ES256K or ES256")
    if header.get("typ") in _FOREIGN_TYPES:
        raise AuthError("BadJwtType", f"invalid jwt type {header['typ']!r}")
    try:
        signature = _b64url(parts[2])
    except (binascii.Error, ValueError):
        raise AuthError("BadJwt", "jwt signature is not base64url") from None
    return Jwt(header, payload, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)


def _number(payload: dict[str, Any], claim: str) -> float | None:
    value = payload.get(claim)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthError("BadJwt", f"jwt {claim} is not a number")
    return float(value)


def check_claims(jwt: Jwt, *, service_did: str, nsid: str, now: float, skew: float = CLOCK_SKEW) -> str:
    """Check iss, aud, lxm, exp and iat; returns the issuer DID."""
    payload = jwt.payload
    iss = payload.get("iss")
    if not isinstance(iss, str) or not is_did(iss):
        raise AuthError("BadJwtIssuer", "jwt iss must be a DID")
    exp = _number(payload, "exp")
    if exp is None:
        raise AuthError("BadJwt", "jwt has no exp")
    if now > exp + skew:
        raise AuthError("JwtExpired", "jwt expired")
    iat = _number(payload, "iat")
    if iat is not None and iat > now + skew:
        raise AuthError("BadJwt", "jwt issued in the future (iat)")
    if exp - now > MAX_LIFETIME + skew:
        raise AuthError("BadJwt", "jwt lifetime too long (exp more than an hour ahead)")
    aud = payload.get("aud")
    if aud not in (service_did, f"{service_did}#{SERVICE_ID}"):
        raise AuthError("BadJwtAudience", "jwt audience does not match service did")
    lxm = payload.get("lxm")
    if lxm != nsid:
        what = "bad" if lxm is not None else "missing"
        raise AuthError("BadJwtLexiconMethod", f'{what} jwt lexicon method ("lxm"); must match: {nsid}')
    return iss


def verify_signature(jwt: Jwt, signing_key: str | None) -> bool:
    """True iff `jwt` is signed by `signing_key` (a did:key) with the curve its `alg` names.

    JWT ES256/ES256K signatures are raw 64-byte r||s over SHA-256 of the signing input,
    exactly what `PublicKey.verify` checks (low-S only, like every atproto signature).
    """
    if signing_key is None:
        return False
    try:
        key: PublicKey = key_from_did_key(signing_key)
    except KeyParseError:
        return False
    return key.curve == ALG_CURVES[jwt.alg] and key.verify(jwt.signing_input, jwt.signature)


class ServiceAuth:
    """Checks a bearer token for one call: claims first (cheap), then the issuer's signature."""

    def __init__(
        self,
        service_did: str,
        resolver: IdentityResolver,
        *,
        clock: Callable[[], float] = time.time,
        skew: float = CLOCK_SKEW,
    ) -> None:
        self.service_did = service_did
        self._resolver = resolver
        self._clock = clock
        self._skew = skew

    async def verify(self, token: str, nsid: str) -> str:
        """The authenticated issuer DID; raises AuthError."""
        jwt = parse_jwt(token)
        iss = check_claims(jwt, service_did=self.service_did, nsid=nsid, now=self._clock(), skew=self._skew)
        if verify_signature(jwt, await self._signing_key(iss, refresh=False)):
            return iss
        # The issuer may have rotated its key since we cached its document: look once more.
        if verify_signature(jwt, await self._signing_key(iss, refresh=True)):
            return iss
        raise AuthError("BadJwtSignature", "jwt signature does not match jwt issuer")

    async def _signing_key(self, did: str, *, refresh: bool) -> str | None:
        try:
            info = await self._resolver.resolve_did(did, force_refresh=refresh)
        except ResolutionError as exc:
            if exc.reason == "unreachable":
                raise AuthError("UpstreamFailure", f"could not resolve jwt issuer {did}") from None
            raise AuthError("BadJwtIssuer", f"could not resolve jwt issuer {did}: {exc.reason}") from None
        return info.signing_key


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None when there is no such header."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError("AuthenticationRequired", "Authorization must use the Bearer scheme")
    token = token.strip()
    if not token:
        raise AuthError("AuthenticationRequired", "empty bearer token")
    return token


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def unauthorized(service_did: str, exc: AuthError) -> web.Response:
    if exc.name == "UpstreamFailure":  # the issuer's DID document could not be fetched: retryable
        status, headers = 502, {}
    else:
        error = "invalid_request" if exc.name == "AuthenticationRequired" else "invalid_token"
        status = 401
        headers = {
            "WWW-Authenticate": f'Bearer realm="{_quoted(service_did)}", error="{error}", '
            f'error_description="{_quoted(exc.message)}"'
        }
    return web.json_response({"error": exc.name, "message": exc.message}, status=status, headers=headers)


def auth_middleware(auth: ServiceAuth) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Checks bearer tokens on `/xrpc/*`; requests without a token pass through unauthenticated."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not request.path.startswith("/xrpc/") or request.method == "OPTIONS":
            return await handler(request)
        nsid = request.path[len("/xrpc/") :]
        try:
            token = bearer_token(request.headers.get("Authorization"))
            if token is not None:
                request[REQUEST_ISSUER] = await auth.verify(token, nsid)
        except AuthError as exc:
            log.info("refused service auth for %s: %s: %s", nsid, exc.name, exc.message)
            return unauthorized(auth.service_did, exc)
        return await handler(request)

    return middleware
