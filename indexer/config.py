"""Settings from ATMX_* environment variables (flags override them in cli.py)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from atmx.indexer.repo.syntax import is_handle

DEFAULT_RELAY = "wss://bsky.network"
DEFAULT_PLC = "https://plc.directory"
DEFAULT_LISTEN = "127.0.0.1:2584"
SUBSCRIBE_PATH = "/xrpc/com.atproto.sync.subscribeRepos"


DEFAULT_XMTP_API = "production=https://grpc.production.xmtp.network:443,dev=https://grpc.dev.xmtp.network:443"
DEFAULT_XMTP_RECHECK = 3600.0
DEFAULT_API_RATE_LIMIT = (3000, 300.0)  # the reference PDS's per-IP limit


class ConfigError(ValueError):
    pass


def parse_duration(value: str) -> float:
    """`30s`, `5m`, `1h`, `2d` (or plain seconds) -> seconds."""
    text = value.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    scale = units.get(text[-1:], None)
    number = text[:-1] if scale else text
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        raise ConfigError(f"duration must look like 30s, 5m or 1h, got {value!r}") from None
    if not seconds > 0:
        raise ConfigError(f"duration must be positive, got {value!r}")
    return seconds


@dataclass(frozen=True)
class Settings:
    relay: str = DEFAULT_RELAY
    plc_url: str = DEFAULT_PLC
    database_url: str | None = None
    database_read_url: str | None = None  # a streaming replica the API reads from; unset = database_url
    data_dir: Path = Path("./atmx-data")
    listen: str = DEFAULT_LISTEN
    handle_resolver: str | None = None
    stall_timeout: float = 60.0
    max_in_flight: int = 2000
    allow_insecure_http: bool = False
    # backfill and gap repair (indexer/backfill.py)
    backfill: bool = False  # `atmx run --backfill`: backfill beside the live indexer
    backfill_workers: int = 16  # requests in flight across all hosts
    backfill_host_rate: float = 3.0  # requests/s per host; the reference PDS allows 3000/5 min per IP
    backfill_host_burst: int = 10
    backfill_host_concurrency: int = 4  # requests in flight per host
    xmtp_api: str = DEFAULT_XMTP_API
    xmtp_recheck: float = DEFAULT_XMTP_RECHECK
    # how often each account's handle is resolved again (a domain can change hands silently)
    handle_recheck: float = 24 * 3600.0
    # retention of what only grows (seconds; None = keep for ever)
    change_retention: float | None = 7 * 86400.0
    history_retention: float | None = None
    rejection_retention: float | None = 30 * 86400.0
    # per-client-IP API limit (api/ratelimit.py): (requests, window seconds), None = off
    api_rate_limit: tuple[int, float] | None = DEFAULT_API_RATE_LIMIT
    api_trusted_proxies: tuple[str, ...] = ()  # peers whose X-Forwarded-For is believed
    # service identity (api/well_known.py, api/auth.py): a hostname-level did:web, e.g. did:web:dir.example.com
    service_did: str | None = None
    service_endpoint: str | None = None  # where PDSes send proxied calls; default https://<did host>

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen)

    @property
    def firehose_url(self) -> str:
        return firehose_url(self.relay)


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"listen address must be host:port, got {value!r}")
    return (host.strip("[]") or "127.0.0.1"), int(port)


def firehose_url(relay: str) -> str:
    """Accept a bare host, a ws(s):// base URL, an http(s):// URL, or the full subscribeRepos URL."""
    url = relay.strip().rstrip("/")
    if "://" not in url:
        url = "wss://" + url
    scheme, rest = url.split("://", 1)
    scheme = {"https": "wss", "http": "ws"}.get(scheme, scheme)
    if scheme not in ("ws", "wss"):
        raise ConfigError(f"relay URL must be ws://, wss://, http:// or https://, got {relay!r}")
    url = f"{scheme}://{rest}"
    if not url.endswith(SUBSCRIBE_PATH):
        url += SUBSCRIBE_PATH
    return url


def service_did_host(did: str) -> str:
    """The host of a hostname-level did:web (atproto forbids paths); `localhost%3A<port>` is allowed for dev."""
    if not did.startswith("did:web:"):
        raise ConfigError(f"ATMX_SERVICE_DID must be a did:web, got {did!r}")
    rest = did[len("did:web:") :]
    host, _, port = rest.replace("%3a", "%3A").partition("%3A")
    if port:
        if host != "localhost" or not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(f"ATMX_SERVICE_DID: a port is only allowed on localhost, got {did!r}")
        return f"localhost:{port}"
    if ":" in rest or "/" in rest:
        raise ConfigError(f"ATMX_SERVICE_DID must be a hostname-level did:web (no path), got {did!r}")
    if host != "localhost" and not is_handle(host):  # a handle is exactly a DNS hostname of >= 2 labels
        raise ConfigError(f"ATMX_SERVICE_DID host is not a hostname: {did!r}")
    if host != host.lower():
        raise ConfigError(f"ATMX_SERVICE_DID host must be lowercase, got {did!r}")
    return host


def default_service_endpoint(did: str) -> str:
    host = service_did_host(did)
    scheme = "http" if host.split(":")[0] == "localhost" else "https"  # resolvers fetch localhost over http
    return f"{scheme}://{host}"


def _service_endpoint(value: str) -> str:
    url = value.strip().rstrip("/")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("https", "http") or not rest or "/" in rest:
        raise ConfigError(f"ATMX_SERVICE_ENDPOINT must be an http(s) origin like https://host, got {value!r}")
    return url


def parse_rate_limit(value: str) -> tuple[int, float] | None:
    """`3000/300s` or `100/1m` -> (requests, seconds); `0` -> None (no limit)."""
    count, sep, window = value.strip().partition("/")
    if not count.isdigit() or (not sep and count != "0"):
        raise ConfigError(f"rate limit must look like 3000/300s, or 0 for none, got {value!r}")
    return (int(count), parse_duration(window)) if int(count) else None


def parse_networks(value: str) -> tuple[str, ...]:
    """Comma-separated addresses or CIDR blocks, validated."""
    parts = tuple(part.strip() for part in value.split(",") if part.strip())
    for part in parts:
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise ConfigError(f"not an IP address or CIDR block: {part!r}") from None
    return parts


def _duration(env: Mapping[str, str], name: str, default: float | None, *, forever: bool = False) -> float | None:
    """A duration setting; with `forever`, `0` or `forever` means no limit (None)."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    if forever and raw.lower() in ("0", "forever", "unlimited"):
        return None
    try:
        return parse_duration(raw)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    plc = env.get("ATMX_PLC_URL") or DEFAULT_PLC
    resolver = env.get("ATMX_HANDLE_RESOLVER") or None
    service_did, service_endpoint = _service_identity(env)
    return Settings(
        relay=env.get("ATMX_RELAY") or DEFAULT_RELAY,
        plc_url=plc.rstrip("/"),
        database_url=env.get("ATMX_DATABASE_URL") or None,
        database_read_url=env.get("ATMX_DATABASE_READ_URL") or None,
        data_dir=Path(env.get("ATMX_DATA_DIR") or "./atmx-data"),
        listen=env.get("ATMX_LISTEN") or DEFAULT_LISTEN,
        handle_resolver=resolver.rstrip("/") if resolver else None,
        stall_timeout=_float(env, "ATMX_STALL_TIMEOUT", 60.0),
        max_in_flight=int(_float(env, "ATMX_MAX_IN_FLIGHT", 2000)),
        # http:// PDS/PLC/did:web endpoints are only for loopback test networks
        allow_insecure_http=(env.get("ATMX_ALLOW_INSECURE_HTTP", "") in ("1", "true", "yes")),
        backfill=(env.get("ATMX_BACKFILL", "") in ("1", "true", "yes")),
        backfill_workers=int(_float(env, "ATMX_BACKFILL_WORKERS", 16)),
        backfill_host_rate=_float(env, "ATMX_BACKFILL_HOST_RATE", 3.0),
        backfill_host_burst=int(_float(env, "ATMX_BACKFILL_HOST_BURST", 10)),
        backfill_host_concurrency=int(_float(env, "ATMX_BACKFILL_HOST_CONCURRENCY", 4)),
        xmtp_api=env.get("ATMX_XMTP_API") or DEFAULT_XMTP_API,
        xmtp_recheck=parse_duration(env["ATMX_XMTP_RECHECK"]) if env.get("ATMX_XMTP_RECHECK") else DEFAULT_XMTP_RECHECK,
        handle_recheck=_duration(env, "ATMX_HANDLE_RECHECK", 24 * 3600.0) or 24 * 3600.0,
        change_retention=_duration(env, "ATMX_CHANGE_RETENTION", 7 * 86400.0, forever=True),
        history_retention=_duration(env, "ATMX_HISTORY_RETENTION", None, forever=True),
        rejection_retention=_duration(env, "ATMX_REJECTION_RETENTION", 30 * 86400.0, forever=True),
        api_rate_limit=parse_rate_limit(env["ATMX_API_RATE_LIMIT"])
        if env.get("ATMX_API_RATE_LIMIT")
        else DEFAULT_API_RATE_LIMIT,
        api_trusted_proxies=parse_networks(env.get("ATMX_API_TRUSTED_PROXIES") or ""),
        service_did=service_did,
        service_endpoint=service_endpoint,
    )


def _service_identity(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(service DID, service endpoint), validated; (None, None) when no identity is configured."""
    did = env.get("ATMX_SERVICE_DID") or None
    endpoint = env.get("ATMX_SERVICE_ENDPOINT") or None
    if did is None:
        if endpoint is not None:
            raise ConfigError("ATMX_SERVICE_ENDPOINT needs ATMX_SERVICE_DID")
        return None, None
    service_did_host(did)
    return did, _service_endpoint(endpoint) if endpoint else default_service_endpoint(did)
