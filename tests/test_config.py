from __future__ import annotations

from pathlib import Path

import pytest

from atmx.indexer.config import ConfigError, firehose_url, from_env, parse_listen


def test_defaults() -> None:
    s = from_env({})
    assert s.firehose_url == "wss://bsky.network/xrpc/com.atproto.sync.subscribeRepos"
    assert s.plc_url == "https://plc.directory"
    assert s.database_url is None
    assert s.listen_host_port == ("127.0.0.1", 2584)
    assert s.data_dir == Path("./atmx-data")


def test_env_names_are_honoured() -> None:
    s = from_env(
        {
            "ATMX_RELAY": "ws://127.0.0.1:2583",
            "ATMX_PLC_URL": "http://127.0.0.1:2582/",
            "ATMX_DATABASE_URL": "postgresql://x@/db",
            "ATMX_DATA_DIR": "/tmp/a",
            "ATMX_LISTEN": "0.0.0.0:9000",
            "ATMX_HANDLE_RESOLVER": "http://127.0.0.1:2583/",
            "ATMX_STALL_TIMEOUT": "5",
        }
    )
    assert s.firehose_url == "ws://127.0.0.1:2583/xrpc/com.atproto.sync.subscribeRepos"
    assert s.plc_url == "http://127.0.0.1:2582"
    assert s.database_url == "postgresql://x@/db"
    assert s.data_dir == Path("/tmp/a")
    assert s.listen_host_port == ("0.0.0.0", 9000)
    assert s.handle_resolver == "http://127.0.0.1:2583"
    assert s.stall_timeout == 5.0


@pytest.mark.parametrize(
    ("relay", "url"),
    [
        ("bsky.network", "wss://bsky.network/xrpc/com.atproto.sync.subscribeRepos"),
        (
            "https://relay1.us-east.bsky.network/",
            "wss://relay1.us-east.bsky.network/xrpc/com.atproto.sync.subscribeRepos",
        ),
        (
            "ws://127.0.0.1:1/xrpc/com.atproto.sync.subscribeRepos",
            "ws://127.0.0.1:1/xrpc/com.atproto.sync.subscribeRepos",
        ),
    ],
)
def test_firehose_url_forms(relay: str, url: str) -> None:
    assert firehose_url(relay) == url


@pytest.mark.parametrize("bad", ["ftp://x", "gopher://relay"])
def test_bad_relay_scheme(bad: str) -> None:
    with pytest.raises(ConfigError):
        firehose_url(bad)


@pytest.mark.parametrize("bad", ["2584", "host:", "host:99999", "host:abc"])
def test_bad_listen(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_listen(bad)


def test_bad_number() -> None:
    with pytest.raises(ConfigError):
        from_env({"ATMX_STALL_TIMEOUT": "soon"})


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("2d", 172800), ("90", 90)])
def test_durations(text: str, seconds: float) -> None:
    from atmx.indexer.config import parse_duration

    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "-5m", "0s", "1w"])
def test_bad_durations(bad: str) -> None:
    from atmx.indexer.config import parse_duration

    with pytest.raises(ConfigError):
        parse_duration(bad)


def test_xmtp_settings() -> None:
    s = from_env({"ATMX_XMTP_API": "dev=http://127.0.0.1:5556", "ATMX_XMTP_RECHECK": "5m"})
    assert (s.xmtp_api, s.xmtp_recheck) == ("dev=http://127.0.0.1:5556", 300.0)
    assert from_env({}).xmtp_api.startswith("production=https://grpc.production.xmtp.network:443")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ATMX_LOG_LEVEL", "LOUD"),
        ("ATMX_MAX_IN_FLIGHT", "-1"),
        ("ATMX_MAX_IN_FLIGHT", "2.5"),
        ("ATMX_BACKFILL_WORKERS", "0"),
        ("ATMX_BACKFILL_HOST_RATE", "-3"),
        ("ATMX_BACKFILL_HOST_RATE", "inf"),
        ("ATMX_IDLE_AFTER", "0"),
        ("ATMX_ALLOW_INSECURE_HTTP", "maybe"),
        ("ATMX_BACKFILL", "sometimes"),
        ("ATMX_BACKFILL_ALL_REPOS", "2"),
        ("ATMX_PLC_URL", "nonsense"),
        ("ATMX_PLC_URL", "ftp://plc.example"),
        ("ATMX_HANDLE_RESOLVER", "resolver.example"),
        ("ATMX_DISCOVERY_HOST", "https://"),
        ("ATMX_DATABASE_URL", "nonsense"),
        ("ATMX_DATABASE_READ_URL", "mysql://x"),
        ("ATMX_DATABASE_WAIT", "soon"),
        ("ATMX_XMTP_RECHECK", "often"),
        ("ATMX_API_RATE_LIMIT", "lots"),
        ("ATMX_API_TRUSTED_PROXIES", "not-an-ip"),
        ("ATMX_RELAY", "ftp://relay"),
        ("ATMX_RELAY", "wss://"),
        ("ATMX_LISTEN", "nowhere"),
    ],
)
def test_every_setting_is_checked_and_named(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_env({name: value})
    message = str(info.value)
    assert name in message and "\n" not in message


def test_new_settings_and_their_defaults() -> None:
    s = from_env({})
    assert s.discovery_host == "https://relay1.us-east.bsky.network"
    assert (s.idle_after, s.database_wait, s.log_level) == (10.0, 30.0, "INFO")
    assert s.backfill_all_repos is False and s.allow_insecure_http is False
    s = from_env(
        {
            "ATMX_DISCOVERY_HOST": "wss://relay.example/xrpc/com.atproto.sync.subscribeRepos",
            "ATMX_IDLE_AFTER": "2",
            "ATMX_DATABASE_WAIT": "5s",
            "ATMX_LOG_LEVEL": "debug",
            "ATMX_BACKFILL_ALL_REPOS": "yes",
            "ATMX_ALLOW_INSECURE_HTTP": "on",
            "ATMX_BACKFILL": "0",
        }
    )
    assert s.discovery_host == "https://relay.example"
    assert (s.idle_after, s.database_wait, s.log_level) == (2.0, 5.0, "DEBUG")
    assert s.backfill_all_repos is True and s.allow_insecure_http is True and s.backfill is False


@pytest.mark.parametrize(
    "given", ["relay.example", "https://relay.example/", "wss://relay.example", "relay.example/xrpc/x"]
)
def test_discovery_host_takes_the_forms_of_a_relay(given: str) -> None:
    assert from_env({"ATMX_DISCOVERY_HOST": given}).discovery_host == "https://relay.example"
