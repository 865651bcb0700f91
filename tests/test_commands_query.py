"""commands/query.py: `atmx recheck` says which case it is; `atmx status` reads as one line per part."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from atmx_command import atmx, one_line
from seed import INBOX_A, seed_account, seed_didcomm, seed_xmtp

from atmx.indexer.commands.query import status_text


@pytest.mark.subprocess  # the real command, as a child process
async def test_recheck_says_which_case_it_is(db_dsn: str, db_pool: asyncpg.Pool) -> None:
    await seed_account(db_pool, "did:plc:alice", handle="alice.test")
    await seed_xmtp(db_pool, "did:plc:alice", inbox=INBOX_A)
    await seed_account(db_pool, "did:plc:dee", handle="dee.test")
    await seed_didcomm(db_pool, "did:plc:dee")
    db = {"ATMX_DATABASE_URL": db_dsn}

    code, out, _ = await atmx("recheck", "alice.test", **db)
    assert code == 0 and out.startswith("1 XMTP binding(s) of alice.test (did:plc:alice) due for a check now")
    code, out, _ = await atmx("recheck", INBOX_A, **db)
    assert code == 0 and out.startswith(f"1 XMTP binding(s) of inbox {INBOX_A} due")
    code, _, err = await atmx("recheck", "nobody.test", **db)
    assert code == 1 and one_line(err) == "no account with the verified handle nobody.test in the index"
    code, _, err = await atmx("recheck", "did:plc:nobody", **db)
    assert code == 1 and one_line(err) == "did:plc:nobody is not in the index"
    code, _, err = await atmx("recheck", "dee.test", **db)
    assert code == 1 and one_line(err) == "did:plc:dee has no XMTP binding"
    code, _, err = await atmx("recheck", "not a subject", **db)
    assert code == 2 and "is not a handle, a DID or a 64-hex XMTP inbox ID" in one_line(err)


def test_status_text_is_one_line_per_part() -> None:
    status: dict[str, Any] = {
        "firehose": {"state": "idle", "cursor": 42, "lagSeconds": 0.0, "idleSeconds": 7200.0},
        "accounts": 3,
        "bindings": [
            {"protocol": "xmtp", "status": "verified", "count": 2},
            {"protocol": "xmtp", "status": "invalid", "count": 1},
            {"protocol": "didcomm", "status": "valid", "count": 1},
        ],
        "hidden": {"accounts": 1, "bindings": 2},
        "backfill": {
            "done": 5,
            "skipped": 1,
            "repos": 8,
            "failed": 1,
            "pending": 1,
            "sources": 1,
            "sourcesComplete": 0,
            "complete": False,
            "resyncQueue": 4,
        },
    }
    assert status_text(status) == [
        "firehose idle, cursor 42, lag 0.0s, last event 7200.0s ago",
        "accounts 3 with a binding (served)",
        "bindings xmtp: verified 2, invalid 1",
        "bindings didcomm: valid 1",
        "hidden   1 account(s) taken down, suspended, deleted or deactivated, with 2 binding(s) kept but not served",
        "backfill 6/8 repos finished (done 5, skipped 1, failed 1, pending 1), sources 0/1 complete; resync queue 4",
    ]
