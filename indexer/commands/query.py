"""`atmx lookup`, `atmx recheck`, `atmx status`: short questions to the index."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from multidict import MultiDict

from atmx.api.errors import XrpcError
from atmx.api.handlers import get_identity, resolve_xmtp_inbox
from atmx.indexer.config import Settings
from atmx.indexer.fatal import Fatal
from atmx.indexer.repo.syntax import is_did, is_handle
from atmx.indexer.service import handle_lookup_resolver, open_database
from atmx.indexer.store import queries
from atmx.indexer.store.status import index_status
from atmx.indexer.store.xmtp_store import XmtpStore

_INBOX = re.compile(r"[0-9a-f]{64}")


async def lookup(settings: Settings, args: argparse.Namespace) -> int:
    """Answer exactly as the API would (the same handlers), including hidden accounts' absence."""
    subject: str = args.subject
    async with open_database(settings) as db, handle_lookup_resolver(settings) as handles:
        try:
            if _INBOX.fullmatch(subject):
                params = MultiDict(inboxId=subject, includeUnverified="true")
                body = await resolve_xmtp_inbox(db.pool, params)
                found = bool(body["accounts"])
            else:
                body = await get_identity(db.pool, MultiDict(actor=subject), handles.resolve_handle)
                found = True
        except XrpcError as exc:
            print(f"{exc.name}: {exc.message}", file=sys.stderr)
            return 1
    print(json.dumps(body, indent=2, sort_keys=True))
    return 0 if found else 1


async def recheck(settings: Settings, args: argparse.Namespace) -> int:
    """Make XMTP bindings due now; says whether the subject is unknown, has none, or how many are due."""
    subject: str = args.subject.removeprefix("@")
    inbox = _INBOX.fullmatch(subject) is not None
    if not (inbox or is_did(subject) or is_handle(subject)):
        raise Fatal(f"{subject!r} is not a handle, a DID or a 64-hex XMTP inbox ID", code=2)
    async with open_database(settings) as db:
        did = subject
        if not inbox and not is_did(subject):
            found = await queries.did_of_handle(db.pool, subject)
            if found is None:
                print(f"no account with the verified handle {subject} in the index", file=sys.stderr)
                return 1
            did = found
        owners = await queries.xmtp_binding_dids(db.pool, did)
        if not owners:
            if inbox:
                print(f"no account in the index claims XMTP inbox {subject}", file=sys.stderr)
            elif not await queries.account_exists(db.pool, did):
                print(f"{did} is not in the index", file=sys.stderr)
            else:
                print(f"{did} has no XMTP binding", file=sys.stderr)
            return 1
        count = await XmtpStore(db.pool).request_xmtp_recheck(did)
    whose = f"inbox {subject}" if inbox else did if did == subject else f"{subject} ({did})"
    print(f"{count} XMTP binding(s) of {whose} due for a check now; a running indexer checks them within a second")
    return 0


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def status_text(status: dict[str, Any]) -> list[str]:
    f = status["firehose"]
    cursor = f"cursor {f['cursor']}" if "cursor" in f else "no cursor yet (no firehose event processed)"
    last = f"last event {_seconds(f['idleSeconds'])} ago" if "idleSeconds" in f else "no event received yet"
    lines = [f"firehose {f['state']}, {cursor}, lag {_seconds(f.get('lagSeconds'))}, {last}"]
    lines.append(f"accounts {status['accounts']} with a binding (served)")
    by_protocol: dict[str, list[str]] = {}
    for row in status["bindings"]:
        by_protocol.setdefault(row["protocol"], []).append(f"{row['status']} {row['count']}")
    for protocol, parts in by_protocol.items():
        lines.append(f"bindings {protocol}: {', '.join(parts)}")
    hidden = status["hidden"]
    lines.append(
        f"hidden   {hidden['accounts']} account(s) taken down, suspended, deleted or deactivated, "
        f"with {hidden['bindings']} binding(s) kept but not served"
    )
    b = status["backfill"]
    lines.append(
        f"backfill {b['done'] + b['skipped']}/{b['repos']} repos finished (done {b['done']}, skipped {b['skipped']}, "
        f"failed {b['failed']}, pending {b['pending']}), sources {b['sourcesComplete']}/{b['sources']} complete"
        f"{', complete' if b['complete'] else ''}; resync queue {b['resyncQueue']}"
    )
    return lines


async def status(settings: Settings, args: argparse.Namespace) -> int:
    async with open_database(settings) as db:
        result = await index_status(db.pool)
    print(json.dumps(result, sort_keys=True) if args.json else "\n".join(status_text(result)))
    return 0
