"""Settings from ATMX_* environment variables (flags override them in cli.py)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from atmx.indexer.repo.syntax import is_handle

DEFAULT_RELAY = "wss://bsky.network"
# A relay documented to serve the collection directory (listReposByCollection), as indigo tap's default.
DEFAULT_DISCOVERY_HOST = "https://relay1.us-east.bsky.network"
DEFAULT_PLC = "https://plc.directory"
DEFAULT_LISTEN = "127.0.0.1:2584"
SUBSCRIBE_PATH = "/xrpc/com.atproto.sync.subscribeRepos"


DEFAULT_XMTP_API = "production=https://grpc.production.xmtp.network:443,dev=https://grpc.dev.xmtp.network:443"
DEFAULT_XMTP_RECHECK = 3600.0
DEFAULT_API_RATE_LIMIT = (3000, 300.0)  # the reference PDS's per-IP limit
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


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
    idle_after: float = 10.0  # seconds without an event before a caught-up indexer reports `idle`
    max_in_flight: int = 2000
    allow_insecure_http: bool = False
    log_level: str = "INFO"
    database_wait: float = 30.0  # how long to wait for PostgreSQL to answer at start
    discovery_host: str = DEFAULT_DISCOVERY_HOST  # where backfill asks listReposByCollection
    backfill_all_repos: bool = False  # allow enumerating every repo with listRepos when unsupported
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
    # how long the API trusts one resolution of a handle it is asked to look up
    handle_lookup_ttl: float = 60.0
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
        raise ConfigError(f"listen address (ATMX_LISTEN, --listen) must be host:port, got {value!r}")
    return (host.strip("[]") or "127.0.0.1"), int(port)


def firehose_url(relay: str) -> str:
    """Accept a bare host, a ws(s):// base URL, an http(s):// URL, or the full subscribeRepos URL."""
    url = relay.strip()
    if "://" not in url:
        url = "wss://" + url
    scheme, rest = url.split("://", 1)
    rest = rest.rstrip("/")
    scheme = {"https": "wss", "http": "ws"}.get(scheme, scheme)
    if scheme not in ("ws", "wss"):
        raise ConfigError(f"relay URL (ATMX_RELAY, --relay) must be ws://, wss://, http:// or https://, got {relay!r}")
    if not rest.split("/", 1)[0] or any(c.isspace() for c in rest):
        raise ConfigError(f"relay URL (ATMX_RELAY, --relay) has no host: {relay!r}")
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


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not 0 < value < float("inf"):
        raise ConfigError(f"{name} must be a positive number, got {raw!r}")
    return value


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ConfigError(f"{name} must be a whole number of at least 1, got {raw!r}")
    return int(raw)


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{name} must be 1/true/yes/on or 0/false/no/off, got {env[name]!r}")


def _retention(env: Mapping[str, str], name: str, default: float | None) -> float | None:
    """A retention: a duration, or `0` / `forever` for no limit (None)."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    if raw.lower() in ("0", "forever", "unlimited"):
        return None
    try:
        return parse_duration(raw)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _duration(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return parse_duration(raw)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def http_url(name: str, value: str) -> str:
    """An operator-given http(s) base URL, without a trailing slash."""
    url = value.strip().rstrip("/")
    scheme, sep, rest = url.partition("://")
    host = rest.split("/", 1)[0]
    if not sep or scheme not in ("http", "https") or not host or any(c.isspace() for c in url):
        raise ConfigError(f"{name} must be an http:// or https:// URL, got {value!r}")
    return url


def host_url(name: str, value: str) -> str:
    """A host given as ATMX_RELAY may be (bare, ws(s)://, http(s)://, any path) -> its https:// origin."""
    url = value.strip()
    if "://" not in url:
        url = "https://" + url
    scheme, _, rest = url.partition("://")
    scheme = {"wss": "https", "ws": "http"}.get(scheme, scheme)
    return http_url(name, f"{scheme}://{rest.split('/', 1)[0]}")


def database_url(name: str, value: str) -> str:
    if not value.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f"{name} must be a PostgreSQL URL like postgresql://user:password@host:5432/db, got {value!r}"
        )
    return value


def log_level(name: str, value: str) -> str:
    level = value.strip().upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"{name} must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return level


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment; every value is checked here, so a bad one stops the start."""
    env = os.environ if env is None else env
    resolver = env.get("ATMX_HANDLE_RESOLVER") or None
    service_did, service_endpoint = _service_identity(env)
    db = env.get("ATMX_DATABASE_URL") or None
    read_db = env.get("ATMX_DATABASE_READ_URL") or None
    s = Settings(
        relay=env.get("ATMX_RELAY") or DEFAULT_RELAY,
        plc_url=http_url("ATMX_PLC_URL", env.get("ATMX_PLC_URL") or DEFAULT_PLC),
        database_url=database_url("ATMX_DATABASE_URL", db) if db else None,
        database_read_url=database_url("ATMX_DATABASE_READ_URL", read_db) if read_db else None,
        data_dir=Path(env.get("ATMX_DATA_DIR") or "./atmx-data"),
        listen=env.get("ATMX_LISTEN") or DEFAULT_LISTEN,
        handle_resolver=http_url("ATMX_HANDLE_RESOLVER", resolver) if resolver else None,
        stall_timeout=_float(env, "ATMX_STALL_TIMEOUT", 60.0),
        idle_after=_float(env, "ATMX_IDLE_AFTER", 10.0),
        max_in_flight=_int(env, "ATMX_MAX_IN_FLIGHT", 2000),
        # http:// PDS/PLC/did:web endpoints are only for loopback test networks
        allow_insecure_http=_bool(env, "ATMX_ALLOW_INSECURE_HTTP"),
        log_level=log_level("ATMX_LOG_LEVEL", env.get("ATMX_LOG_LEVEL") or "INFO"),
        database_wait=_duration(env, "ATMX_DATABASE_WAIT", 30.0),
        discovery_host=host_url("ATMX_DISCOVERY_HOST", env.get("ATMX_DISCOVERY_HOST") or DEFAULT_DISCOVERY_HOST),
        backfill_all_repos=_bool(env, "ATMX_BACKFILL_ALL_REPOS"),
        backfill=_bool(env, "ATMX_BACKFILL"),
        backfill_workers=_int(env, "ATMX_BACKFILL_WORKERS", 16),
        backfill_host_rate=_float(env, "ATMX_BACKFILL_HOST_RATE", 3.0),
        backfill_host_burst=_int(env, "ATMX_BACKFILL_HOST_BURST", 10),
        backfill_host_concurrency=_int(env, "ATMX_BACKFILL_HOST_CONCURRENCY", 4),
        xmtp_api=env.get("ATMX_XMTP_API") or DEFAULT_XMTP_API,
        xmtp_recheck=_duration(env, "ATMX_XMTP_RECHECK", DEFAULT_XMTP_RECHECK),
        handle_recheck=_duration(env, "ATMX_HANDLE_RECHECK", 24 * 3600.0),
        handle_lookup_ttl=_duration(env, "ATMX_HANDLE_LOOKUP_TTL", 60.0),
        change_retention=_retention(env, "ATMX_CHANGE_RETENTION", 7 * 86400.0),
        history_retention=_retention(env, "ATMX_HISTORY_RETENTION", None),
        rejection_retention=_retention(env, "ATMX_REJECTION_RETENTION", 30 * 86400.0),
        api_rate_limit=_rate_limit(env),
        api_trusted_proxies=_networks(env),
        service_did=service_did,
        service_endpoint=service_endpoint,
    )
    validate(s)
    return s


def validate(s: Settings) -> None:
    """Checks that need the final settings (flags applied over the environment)."""
    parse_listen(s.listen)
    firehose_url(s.relay)


def _rate_limit(env: Mapping[str, str]) -> tuple[int, float] | None:
    raw = env.get("ATMX_API_RATE_LIMIT")
    if not raw:
        return DEFAULT_API_RATE_LIMIT
    try:
        return parse_rate_limit(raw)
    except ConfigError as exc:
        raise ConfigError(f"ATMX_API_RATE_LIMIT: {exc}") from None


def _networks(env: Mapping[str, str]) -> tuple[str, ...]:
    try:
        return parse_networks(env.get("ATMX_API_TRUSTED_PROXIES") or "")
    except ConfigError as exc:
        raise ConfigError(f"ATMX_API_TRUSTED_PROXIES: {exc}") from None


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
