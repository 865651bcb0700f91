"""The `atmx` command: arguments, settings, logging, and which subcommand runs.

Each subcommand lists only the flags it uses. A mistake the operator can fix (a bad setting,
a port in use, a database that does not answer) ends with one line on stderr and a non-zero
exit status, never a traceback: 2 for settings and arguments, 1 for everything else.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from atmx.indexer import logs
from atmx.indexer.config import ConfigError, Settings, from_env, host_url, http_url, log_level, validate
from atmx.indexer.fatal import Fatal
from atmx.indexer.version import __version__

# Each command imports what it runs inside its own function: `atmx --version` and `--help` start
# in ~0.15 s instead of the ~1 s that aiohttp, asyncpg, grpc and the rest of atmx take to import.

# flag -> (settings field, help); each subcommand picks the ones it uses
_FLAGS: dict[str, tuple[str, str]] = {
    "--relay": ("relay", "firehose host or URL (ATMX_RELAY, default wss://bsky.network)"),
    "--plc-url": ("plc_url", "PLC directory (ATMX_PLC_URL, default https://plc.directory)"),
    "--database-url": ("database_url", "PostgreSQL URL (ATMX_DATABASE_URL); an embedded server when unset"),
    "--data-dir": ("data_dir", "where the embedded PostgreSQL lives (ATMX_DATA_DIR, default ./atmx-data)"),
    "--listen": ("listen", "API host:port (ATMX_LISTEN, default 127.0.0.1:2584)"),
    "--handle-resolver": ("handle_resolver", "trusted resolveHandle service base URL (ATMX_HANDLE_RESOLVER)"),
    "--discovery-host": (
        "discovery_host",
        "relay host whose collection directory backfill lists repos from "
        "(ATMX_DISCOVERY_HOST, default relay1.us-east.bsky.network)",
    ),
}
_DATABASE = ("--database-url", "--data-dir")
_INDEXER = ("--relay", "--plc-url", *_DATABASE, "--handle-resolver", "--discovery-host")


def _add_flags(p: argparse.ArgumentParser, flags: Sequence[str]) -> None:
    for flag in flags:
        p.add_argument(flag, help=_FLAGS[flag][1])
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (ATMX_LOG_LEVEL, default INFO)")


def _add_backfill_switches(p: argparse.ArgumentParser, *, live: bool) -> None:
    if live:
        p.add_argument("--backfill", action="store_true", help="also backfill beside the live indexer (ATMX_BACKFILL)")
    p.add_argument(
        "--all-repos",
        action="store_true",
        help="where the discovery host has no collection directory, list every repo of the network "
        "with listRepos (ATMX_BACKFILL_ALL_REPOS); refused without it",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atmx",
        description="A verified AT Protocol directory of messaging identities (XMTP, DIDComm).",
    )
    parser.add_argument("--version", action="version", version=f"atmx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text, flags in (
        ("run", "run the firehose indexer and the XRPC API in one process", (*_INDEXER, "--listen")),
        ("index", "run the firehose indexer only (no HTTP listener)", _INDEXER),
        (
            "serve",
            "run the XRPC API only, against the database an indexer writes",
            ("--plc-url", *_DATABASE, "--listen"),
        ),
    ):
        p = sub.add_parser(name, help=text, description=text)
        _add_flags(p, flags)
        if name != "serve":
            _add_backfill_switches(p, live=True)
    lookup = sub.add_parser("lookup", help="print what the index holds for a handle, DID or XMTP inbox ID")
    _add_flags(lookup, _DATABASE)
    lookup.add_argument("subject", help="handle, DID or 64-hex XMTP inbox ID")
    rc = sub.add_parser(
        "recheck",
        help="check the XMTP bindings of a handle, DID or inbox again now",
        description="Make the XMTP bindings of a handle, DID or inbox ID due now; a running indexer re-checks them.",
    )
    _add_flags(rc, _DATABASE)
    rc.add_argument("subject", help="handle, DID or 64-hex XMTP inbox ID")
    st = sub.add_parser("status", help="print firehose state, cursor, lag, counts by status and backfill progress")
    _add_flags(st, _DATABASE)
    st.add_argument("--json", action="store_true", help="print one JSON object")
    verify = sub.add_parser(
        "verify",
        help="verify every commit in a folder of .bin frames or a live firehose",
        description="Verify every #commit (and #sync) seen, whatever the collection; print counts by outcome.",
    )
    _add_flags(verify, ("--plc-url",))
    verify.add_argument(
        "source", help="directory of .bin websocket messages, or a relay: host, ws(s)://, http(s)://, or the full URL"
    )
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.add_argument("--idle", type=float, default=5.0, help="stop a live source after this many quiet seconds")
    verify.add_argument("--limit", type=int, default=None, help="stop a live source after this many frames")
    _add_backfill_parser(sub)
    return parser


def _add_backfill_parser(sub: Any) -> None:
    bf = sub.add_parser(
        "backfill",
        help="index every existing binding: discover repos, fetch their records with proof (resumable)",
        description="Without --pds/--did/--dids-file, lists the repos holding each collection on the discovery "
        "host (ATMX_DISCOVERY_HOST) with listReposByCollection. Progress is kept in PostgreSQL: rerun to resume.",
    )
    _add_flags(bf, ("--discovery-host", "--plc-url", *_DATABASE, "--handle-resolver"))
    _add_backfill_switches(bf, live=False)
    bf.add_argument("--pds", action="append", default=[], metavar="URL", help="enumerate this PDS with listRepos")
    bf.add_argument("--did", action="append", default=[], help="backfill this DID (repeatable)")
    bf.add_argument("--dids-file", help="file with one DID per line")
    bf.add_argument("--restart", action="store_true", help="forget saved progress and fetch everything again")
    bf.add_argument("--workers", type=int, help="requests in flight over all hosts (ATMX_BACKFILL_WORKERS, 16)")
    bf.add_argument("--host-rate", type=float, help="requests/s per host (ATMX_BACKFILL_HOST_RATE, 3)")
    bf.add_argument("--host-concurrency", type=int, help="requests in flight per host (default 4)")
    bf.add_argument("--no-progress", action="store_true", help="no progress bar")
    bf.add_argument("--json", action="store_true", help="print the summary as JSON")


def settings_from(args: argparse.Namespace) -> Settings:
    """The environment's settings with the flags given on top, all checked."""
    s = from_env()
    overrides: dict[str, Any] = {}
    for flag, (field_name, _) in _FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if not value:
            continue
        if field_name in ("plc_url", "handle_resolver"):
            value = http_url(flag, value)
        elif field_name == "discovery_host":
            value = host_url(flag, value)
        elif field_name == "data_dir":
            value = Path(value)
        elif field_name == "relay":
            value = value.rstrip("/")
        overrides[field_name] = value
    if getattr(args, "log_level", None):
        overrides["log_level"] = log_level("--log-level", args.log_level)
    if getattr(args, "backfill", False):
        overrides["backfill"] = True
    if getattr(args, "all_repos", False):
        overrides["backfill_all_repos"] = True
    for arg, field_name, kind in (
        ("workers", "backfill_workers", "--workers"),
        ("host_rate", "backfill_host_rate", "--host-rate"),
        ("host_concurrency", "backfill_host_concurrency", "--host-concurrency"),
    ):
        value = getattr(args, arg, None)
        if value is not None:
            if not value > 0:
                raise ConfigError(f"{kind} must be positive, got {value}")
            overrides[field_name] = value
    s = dataclasses.replace(s, **overrides)
    validate(s)
    from atmx.indexer.xmtp.client import parse_xmtp_api

    try:
        parse_xmtp_api(s.xmtp_api)
    except ValueError as exc:
        raise ConfigError(f"ATMX_XMTP_API: {exc}") from None
    return s


def run_until_signal(coro: Coroutine[Any, Any, int]) -> int:
    """Run a command's coroutine; SIGINT/SIGTERM cancel it, which is a clean stop (exit 0 or 130)."""

    async def main() -> int:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await task
        except asyncio.CancelledError:
            return -1

    return asyncio.run(main())


def _command(name: str) -> Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]:
    from atmx.indexer.commands import backfill, query, services, verify

    table: dict[str, Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]] = {
        "run": services.run,
        "index": services.index,
        "serve": services.serve_api,
        "lookup": query.lookup,
        "recheck": query.recheck,
        "status": query.status,
        "verify": verify.verify,
        "backfill": backfill.backfill,
    }
    return table[name]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except ConfigError as exc:
        print(f"atmx: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    try:
        code = run_until_signal(_command(args.command)(settings, args))
    except Fatal as exc:
        print(f"atmx {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except ConfigError as exc:
        print(f"atmx {args.command}: {exc}", file=sys.stderr)
        return 2
    if code == -1:  # stopped by a signal
        if args.command == "backfill":
            print("atmx backfill: stopped; progress is saved, run again to resume", file=sys.stderr)
            return 130
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
