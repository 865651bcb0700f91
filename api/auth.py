"""Inter-service JWTs from PDSes proxying `directory.atmx.*` calls (`atproto-proxy` header).

A PDS forwarding a user's call signs a short JWT with the user's `#atproto` key:
`iss` = user DID, `aud` = our service DID (bare, or with `#atmx_directory`), `lxm` = the
called NSID, `exp` about a minute ahead. The parsing and claim checks below are pure; the
signature check needs the issuer's key, which `ServiceAuth` gets from the `IdentityResolver`.

Lookups are public, so a request without a token is served as usual; a request WITH a token
that fails any check is refused (401), because the caller asked to be authenticated.

Everything in a token and in the request path is a stranger's: fields have strict types,
times must be finite, the path's method must be an NSID before it is compared or echoed, and
nothing is fetched (the issuer's DID document) until every check that needs no I/O passed.
Every failure to resolve the issuer is the same 401, so a token cannot be used to probe which
hosts atmx can reach.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from atmx.indexer.identity.resolver import IdentityResolver, ResolutionError
from atmx.indexer.repo.crypto import KeyParseError, PublicKey, key_from_did_key
from atmx.indexer.repo.syntax import is_did, is_nsid

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
SIGNATURE_SIZE = 64  # ES256/ES256K JWS signatures are raw r||s
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


class _NonFinite(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    # Python's json accepts NaN and ±Infinity, which JSON itself does not; a NaN `exp` never expires.
    raise _NonFinite(name)


def _json_object(part: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64url(part), parse_constant=_refuse_constant)
    except _NonFinite:
        raise AuthError("BadJwt", f"jwt {what} holds NaN or Infinity, which JSON does not allow") from None
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
    for field in ("alg", "typ", "kid"):  # strings when present: anything else is not a JWS header
        if field in header and not isinstance(header[field], str):
            raise AuthError("BadJwt", f"jwt header {field} is not a string")
    alg = header.get("alg")
    if alg not in ALG_CURVES:  # also refuses "none" and HMAC algorithms
        raise AuthError("BadJwt", f"unsupported jwt alg {str(alg)[:20]!r}: expected ES256K or ES256")
    if header.get("typ") in _FOREIGN_TYPES:
        raise AuthError("BadJwtType", f"invalid jwt type {header['typ']!r}")
    try:
        signature = _b64url(parts[2])
    except (binascii.Error, ValueError):
        raise AuthError("BadJwt", "jwt signature is not base64url") from None
    if len(signature) != SIGNATURE_SIZE:  # no key can verify it: refuse before looking one up
        raise AuthError("BadJwt", f"jwt signature is not {SIGNATURE_SIZE} bytes")
    return Jwt(header, payload, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)


def _number(payload: dict[str, Any], claim: str) -> float | None:
    value = payload.get(claim)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthError("BadJwt", f"jwt {claim} is not a number")
    try:
        number = float(value)
    except OverflowError:  # an integer literal of hundreds of digits
        raise AuthError("BadJwt", f"jwt {claim} is out of range") from None
    if not math.isfinite(number):  # 1e400 parses as inf; NaN compares false with everything
        raise AuthError("BadJwt", f"jwt {claim} is not a finite number")
    return number


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
    if not is_nsid(nsid):  # it comes from the request path: never compared, never echoed
        raise AuthError("BadJwtLexiconMethod", "the called method is not a valid NSID")
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
        """The authenticated issuer DID; raises AuthError.

        Order matters: shape, alg, types, times, aud, lxm and the NSID are all checked
        before the issuer's DID document is fetched, so junk costs no request.
        """
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
            # One answer for not found, unreachable, forbidden or malformed: telling them apart
            # would let a caller map which hosts atmx can reach. The reason goes to the log.
            log.info("jwt issuer %s not resolved: %s", did, exc.reason)
            raise AuthError("BadJwtIssuer", "could not resolve jwt issuer") from None
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
    """`text` as the inside of an RFC 7230 quoted-string: printable ASCII only, quotes escaped.

    Messages may carry bits of a token (an alg name); a CR or LF would end the header, and
    aiohttp answers that by dropping the connection.
    """
    safe = "".join(c if " " <= c <= "~" else "?" for c in text)
    return safe.replace("\\", "\\\\").replace('"', '\\"')


def unauthorized(service_did: str, exc: AuthError) -> web.Response:
    error = "invalid_request" if exc.name == "AuthenticationRequired" else "invalid_token"
    headers = {
        "WWW-Authenticate": f'Bearer realm="{_quoted(service_did)}", error="{error}", '
        f'error_description="{_quoted(exc.message)}"'
    }
    return web.json_response({"error": exc.name, "message": exc.message}, status=401, headers=headers)


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
            log.info("refused service auth for %r: %s: %s", nsid[:100], exc.name, exc.message)
            return unauthorized(auth.service_did, exc)
        return await handler(request)

    return middleware
