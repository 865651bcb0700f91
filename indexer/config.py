"""Settings from ATMX_* environment variables (flags override them in cli.py)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_RELAY = "wss://bsky.network"
DEFAULT_PLC = "https://plc.directory"
DEFAULT_LISTEN = "127.0.0.1:2584"
SUBSCRIBE_PATH = "/xrpc/com.atproto.sync.subscribeRepos"


DEFAULT_XMTP_API = "production=https://grpc.production.xmtp.network:443,dev=https://grpc.dev.xmtp.network:443"
DEFAULT_XMTP_RECHECK = 3600.0


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
    return Settings(
        relay=env.get("ATMX_RELAY") or DEFAULT_RELAY,
        plc_url=plc.rstrip("/"),
        database_url=env.get("ATMX_DATABASE_URL") or None,
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
    )
