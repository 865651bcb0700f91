"""Talking to the XMTP network: an inbox's identity log and smart-contract-wallet checks (async gRPC).

The XMTP v3 node (xmtp-node-go) serves `xmtp.identity.api.v1.IdentityApi` over gRPC; atmx only
reads from it. Everything the node says is later checked by the pure fold (`association.py`),
except smart-contract-wallet signatures, which the node verifies for us (recorded as node-trusted).
Those verdicts are unsigned, so they are believed only over TLS or from a loopback node: over
plaintext to another host anyone on the path could answer them, and every one is "undecided".

Transport failures raise `XmtpUnavailable` with a `reason` so that the caller can keep a binding
`pending` and retry with backoff: `unreachable`, `timeout`, `rate_limited`, `server_error` (the
node answered with a gRPC error), `bad_response` (it answered something that is not a valid
answer) and `too_large` (over our caps). Each environment (`production`, `dev`, ...) is one
`IdentitySource`; the decentralized network's `QueryEnvelopes` read path can be added as a
second implementation of that interface. The messages themselves, and what counts as an honest
answer, are identity_api.py's; its names are re-exported here.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Protocol, Self, TypeVar
from urllib.parse import urlsplit

import grpc
import grpc.aio

from atmx.indexer.xmtp.identity_api import (
    MAX_SCW_BATCH,
    MAX_UPDATES,
    IdentityUpdateLog,
    ScwSignatureCheck,
    XmtpUnavailable,
    check_inbox_id,
    decode_scw,
    decode_updates,
    scw_request,
    updates_request,
)

__all__ = [
    "MAX_SCW_BATCH",
    "MAX_UPDATES",
    "GrpcIdentitySource",
    "IdentitySource",
    "IdentityUpdateLog",
    "OnCall",
    "ScwSignatureCheck",
    "XmtpNetwork",
    "XmtpUnavailable",
    "parse_xmtp_api",
]

# 256 updates of a few KiB each (passkey signatures are the largest) fit well inside this.
MAX_RESPONSE_BYTES = 4 << 20
DEFAULT_TIMEOUT = 10.0

_IDENTITY_SERVICE = "/xmtp.identity.api.v1.IdentityApi/"
_GET_IDENTITY_UPDATES = _IDENTITY_SERVICE + "GetIdentityUpdates"
_VERIFY_SCW = _IDENTITY_SERVICE + "VerifySmartContractWalletSignatures"

# A restarted node should be reachable again within seconds, not after grpc's default 120 s cap.
_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 10_000),
    ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
    ("grpc.max_send_message_length", 1 << 20),
)

_ENV_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")

_T = TypeVar("_T")

log = logging.getLogger(__name__)

OnCall = Callable[[str, str, float, str], None]
"""on_call(env, method, seconds, outcome): outcome is `ok` or an `XmtpUnavailable` reason."""


class IdentitySource(Protocol):
    """Where one XMTP environment's identity logs come from."""

    async def get_identity_updates(self, inbox_id: str, after_sequence_id: int) -> list[IdentityUpdateLog]: ...

    async def verify_scw_signatures(self, checks: Sequence[ScwSignatureCheck]) -> list[bool | None]: ...

    async def close(self) -> None: ...


def parse_xmtp_api(value: str) -> dict[str, str]:
    """`env=url,env=url` -> {env: url} in the given order (the order environments are tried in)."""
    envs: dict[str, str] = {}
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        env, sep, url = item.partition("=")
        env, url = env.strip(), url.strip()
        if not sep or not env or not url:
            raise ValueError(f"ATMX_XMTP_API: {item!r} is not env=url")
        if not set(env) <= _ENV_CHARS:
            raise ValueError(f"ATMX_XMTP_API: environment name {env!r} must be lowercase letters, digits, - or _")
        if env in envs:
            raise ValueError(f"ATMX_XMTP_API: environment {env!r} is listed twice")
        _target(url)  # validates
        envs[env] = url
    if not envs:
        raise ValueError("ATMX_XMTP_API: no environment configured")
    return envs


def _target(url: str) -> tuple[str, bool]:
    """URL -> (grpc target "host:port", use TLS)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"ATMX_XMTP_API: bad URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"ATMX_XMTP_API: {url!r} must start with https:// (TLS) or http:// (plaintext)")
    if not parts.hostname or parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(f"ATMX_XMTP_API: {url!r} must be scheme://host[:port]")
    if parts.path not in ("", "/"):
        raise ValueError(f"ATMX_XMTP_API: {url!r} must not have a path")
    tls = parts.scheme == "https"
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{host}:{port or (443 if tls else 80)}", tls


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _status_reason(code: grpc.StatusCode, details: str) -> str:
    if code == grpc.StatusCode.UNAVAILABLE:
        return "unreachable"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "timeout"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # grpc reports our own receive cap this way too.
        return "too_large" if "larger than max" in details else "rate_limited"
    return "server_error"


class GrpcIdentitySource:
    """`xmtp.identity.api.v1.IdentityApi` of one xmtp-node-go environment over gRPC."""

    def __init__(
        self,
        env: str,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        page_size: int | None = None,
        on_call: OnCall | None = None,
    ) -> None:
        self.env = env
        self.url = url
        self._target, self._tls = _target(url)
        self._timeout = timeout
        # xmtp-node-go answers with the whole log after the sequence id (its GetInboxLogFiltered query
        # has no LIMIT); a server that pages is configured with its page size and says so by filling a page.
        self._page_size = page_size
        self._on_call = on_call
        self._channel: grpc.aio.Channel | None = None
        # An unsigned verdict is only as good as the link it came over.
        self._scw_trusted = self._tls or _loopback(url)
        if not self._scw_trusted:
            log.warning(
                "XMTP %s: %s is plaintext to another host: smart-contract-wallet verdicts not trusted", env, url
            )

    def _get_channel(self) -> grpc.aio.Channel:
        # Created lazily: a grpc.aio channel belongs to the event loop that is running when it is made.
        if self._channel is None:
            if self._tls:
                creds = grpc.ssl_channel_credentials()
                self._channel = grpc.aio.secure_channel(self._target, creds, options=_CHANNEL_OPTIONS)
            else:
                self._channel = grpc.aio.insecure_channel(self._target, options=_CHANNEL_OPTIONS)
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()

    async def _call(self, method: str, request: bytes, seconds: float, decode: Callable[[bytes], _T]) -> _T:
        """One unary call on raw bytes, decoded by `decode` (so that garbage is ours to classify)."""
        name = method.rsplit("/", 1)[1]
        started = time.monotonic()
        outcome = "cancelled"
        try:
            call = self._get_channel().unary_unary(method)
            try:
                raw: bytes = await call(request, timeout=seconds)
            except grpc.aio.AioRpcError as exc:
                details = exc.details() or ""
                reason = _status_reason(exc.code(), details)
                raise XmtpUnavailable(self.env, reason, f"{name}: {exc.code().name}: {details}") from None
            result = decode(raw)
            outcome = "ok"
            return result
        except XmtpUnavailable as exc:
            outcome = exc.reason
            raise
        finally:
            if self._on_call is not None:
                self._on_call(self.env, name, time.monotonic() - started, outcome)

    async def get_identity_updates(self, inbox_id: str, after_sequence_id: int = 0) -> list[IdentityUpdateLog]:
        check_inbox_id(inbox_id)
        deadline = time.monotonic() + self._timeout
        logs: list[IdentityUpdateLog] = []
        after = after_sequence_id
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise XmtpUnavailable(self.env, "timeout", f"GetIdentityUpdates: paging took over {self._timeout}s")
            page = await self._fetch_page(inbox_id, after, remaining)
            logs.extend(page)
            if len(logs) > MAX_UPDATES:
                raise XmtpUnavailable(self.env, "too_large", f"inbox {inbox_id} has over {MAX_UPDATES} updates")
            if not page or self._page_size is None or len(page) < self._page_size:
                return logs
            after = page[-1].sequence_id

    async def _fetch_page(self, inbox_id: str, after: int, seconds: float) -> list[IdentityUpdateLog]:
        request = updates_request(inbox_id, after)
        return await self._call(
            _GET_IDENTITY_UPDATES, request, seconds, lambda raw: decode_updates(self.env, raw, inbox_id, after)
        )

    async def verify_scw_signatures(self, checks: Sequence[ScwSignatureCheck]) -> list[bool | None]:
        """True/False as the node judged each signature; None when the node could not decide."""
        if not checks:
            return []
        request = scw_request(checks)  # refuses more than MAX_SCW_BATCH
        if not self._scw_trusted:
            return [None] * len(checks)  # not asked: a plaintext answer is anyone's on the path
        return await self._call(_VERIFY_SCW, request, self._timeout, lambda raw: decode_scw(self.env, raw, len(checks)))


class XmtpNetwork:
    """The configured XMTP environments, in the order they should be tried."""

    def __init__(
        self,
        envs: Mapping[str, str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        page_size: int | None = None,
        on_call: OnCall | None = None,
    ) -> None:
        if not envs:
            raise ValueError("no XMTP environment configured")
        self._sources: dict[str, IdentitySource] = {
            env: GrpcIdentitySource(env, url, timeout=timeout, page_size=page_size, on_call=on_call)
            for env, url in envs.items()
        }

    @property
    def envs(self) -> list[str]:
        return list(self._sources)

    def add_source(self, env: str, source: IdentitySource) -> None:
        """Use another transport for an environment (e.g. the decentralized network's read path)."""
        self._sources[env] = source

    def _source(self, env: str) -> IdentitySource:
        try:
            return self._sources[env]
        except KeyError:
            raise ValueError(f"unknown XMTP environment {env!r} (configured: {', '.join(self._sources)})") from None

    async def get_identity_updates(
        self, env: str, inbox_id: str, after_sequence_id: int = 0
    ) -> list[IdentityUpdateLog]:
        """The inbox's log entries after `after_sequence_id`, in order (unverified)."""
        return await self._source(env).get_identity_updates(inbox_id, after_sequence_id)

    async def verify_scw_signatures(self, env: str, checks: Sequence[ScwSignatureCheck]) -> list[bool | None]:
        return await self._source(env).verify_scw_signatures(checks)

    async def close(self) -> None:
        for source in self._sources.values():
            await source.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
