"""A quiet network looks idle, not lagging: lag is the delay of events not yet processed.

Pure parts (index/lag.py, the state rule), the report table's in-place upgrade from an index of
the previous schema, and end to end: a real `atmx run` against the reference PDS on loopback,
one write, then a quiet spell several times ATMX_STALL_TIMEOUT long, after which the API,
`_health`, `atmx status` and the metrics say `idle` with lag 0 and nothing was logged at WARNING.

The issue's scenario is two minutes of quiet with the default 60 s stall timeout: two silent
resubscribes. Here ATMX_STALL_TIMEOUT=3 and ATMX_IDLE_AFTER=2 with QUIET=10 s of quiet give
three resubscribes in the same window, so the same behaviour is checked in well under a minute.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from devnet_harness import Devnet
from sample_records import handle, keypackage_record

from atmx.indexer.index.lag import Lag
from atmx.indexer.liveness import LAGGING_AFTER, firehose_state
from atmx.indexer.store import queries
from atmx.indexer.store.database import apply_schema
from atmx.indexer.store.liveness import Report, save_report

V2_SCHEMA = (Path(__file__).parent / "fixtures" / "schema" / "v2.sql").read_text()
ATMX = [sys.executable, "-m", "atmx.indexer.cli"]

STALL_TIMEOUT = 3.0  # ATMX_STALL_TIMEOUT for the end-to-end run (default 60)
IDLE_AFTER = 2.0  # ATMX_IDLE_AFTER (default 10)
QUIET = 10.0  # seconds without a write: over three stall timeouts


# --- the lag rule ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def iso(self, seconds_ago: float) -> str:
        return (self.now - timedelta(seconds=seconds_ago)).isoformat().replace("+00:00", "Z")


def test_a_caught_up_stream_keeps_lag_0_however_long_it_is_quiet() -> None:
    clock = Clock()
    lag = Lag(None, clock)
    assert lag.observe(1, clock.iso(0.2), 0) == pytest.approx(0.2)
    clock.now += timedelta(hours=3)  # nothing arrives for hours
    assert lag.observe(1, clock.iso(3 * 3600 + 0.2), 0) == pytest.approx(0.2)


def test_a_replayed_backlog_lags_by_the_age_of_its_events() -> None:
    clock = Clock()
    lag = Lag(None, clock)
    assert lag.observe(5, clock.iso(600), 0) == pytest.approx(600)  # the relay replays 10-minute-old events
    clock.now += timedelta(seconds=1)
    assert lag.observe(9, clock.iso(300), 0) == pytest.approx(300)  # catching up


def test_events_stuck_in_flight_lag_by_how_long_they_wait() -> None:
    clock = Clock()
    lag = Lag(None, clock)
    assert lag.observe(1, clock.iso(0.1), 0) == pytest.approx(0.1)
    clock.now += timedelta(hours=1)  # quiet (liveness looks every few seconds), then an event arrives
    assert lag.observe(1, clock.iso(3600.1), 0) == pytest.approx(0.1)
    clock.now += timedelta(seconds=0.5)
    assert lag.observe(1, clock.iso(3600.6), 1) < 1  # it has not waited yet, whatever the cursor's age
    clock.now += timedelta(seconds=90)
    assert lag.observe(1, clock.iso(3690.6), 1) == pytest.approx(90.5)  # the database is down: it grows


def test_the_state_rule() -> None:
    state = {"lag": 0.0, "idle": 5.0, "in_flight": 0, "idle_after": 2.0}
    assert firehose_state(connected=True, **state) == "idle"  # type: ignore[arg-type]
    assert firehose_state(connected=True, **{**state, "idle": 0.5}) == "live"  # type: ignore[arg-type]
    assert firehose_state(connected=True, **{**state, "in_flight": 3}) == "live"  # type: ignore[arg-type]
    assert firehose_state(connected=True, **{**state, "idle": None}) == "idle"  # type: ignore[arg-type]
    assert firehose_state(connected=True, **{**state, "lag": LAGGING_AFTER + 1}) == "lagging"  # type: ignore[arg-type]
    assert firehose_state(connected=False, **state) == "disconnected"  # type: ignore[arg-type]


def test_a_silence_is_a_stall_only_if_older_events_arrive_after_it() -> None:
    from atmx.indexer.firehose.silence import SilenceProbe

    probe = SilenceProbe(stall_timeout=60)
    assert not probe.held_back("2020-01-01T00:00:00Z")  # not armed: no resubscribe for silence yet
    now = datetime.now(UTC)
    for seconds_before, held in ((50, True), (5, False), (-1, False)):  # in transit within 10 s
        probe.arm()
        assert probe.armed
        when = (now - timedelta(seconds=seconds_before)).isoformat()
        assert probe.held_back(when) is held and not probe.armed
    probe.arm()
    assert not probe.held_back(None) and not probe.held_back("not a time")


# --- the report table -----------------------------------------------------------------------


async def test_an_index_of_the_previous_schema_gets_the_report_table_in_place(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        await conn.execute(V2_SCHEMA)
        await conn.execute(
            "INSERT INTO cursors (upstream, seq, event_time) VALUES ('wss://relay', 42, now() - interval '2 hours')"
        )
    assert await db_pool.fetchval("SELECT to_regclass('firehose_status')") is None
    # before any indexer of this version reports: disconnected, the lag is the cursor event's age
    await apply_schema(db_pool)
    await apply_schema(db_pool)
    before = await queries.get_health(db_pool)
    assert (before.cursor, before.state) == (42, "disconnected")
    assert before.lag_seconds is not None and before.lag_seconds > 7100
    # the indexer reports idle: lag 0 though the last event is two hours old
    await save_report(db_pool, "wss://relay", Report("idle", True, 0.0, 7200.0))
    after = await queries.get_health(db_pool)
    assert (after.cursor, after.state, after.lag_seconds) == (42, "idle", 0.0)
    assert after.idle_seconds is not None and 7199 < after.idle_seconds < 7300
    # a restart that has received nothing yet keeps the time of the last event
    await save_report(db_pool, "wss://relay", Report("idle", True, 0.0, None))
    again = await queries.get_health(db_pool)
    assert again.idle_seconds is not None and again.idle_seconds > 7199
    assert await db_pool.fetchval("SELECT seq FROM cursors") == 42


# --- end to end -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found is not None, name
    return float(found.group(1))


@pytest.mark.devnet
async def test_a_quiet_network_is_idle_with_lag_0_and_no_warning(devnet: Devnet, db_dsn: str) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATMX_")}
    env.update(
        ATMX_RELAY=devnet.firehose_url,
        ATMX_PLC_URL=devnet.plc_url,
        ATMX_HANDLE_RESOLVER=devnet.pds_url,
        ATMX_ALLOW_INSECURE_HTTP="1",
        ATMX_DATABASE_URL=db_dsn,
        ATMX_LISTEN=f"127.0.0.1:{port}",
        ATMX_STALL_TIMEOUT=str(STALL_TIMEOUT),
        ATMX_IDLE_AFTER=str(IDLE_AFTER),
    )
    proc = await asyncio.create_subprocess_exec(
        *ATMX, "run", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http, devnet.client() as pds:

            async def get(path: str, **params: str) -> tuple[int, Any]:
                async with http.get(base + path, params=params) as resp:
                    return resp.status, await (resp.json() if path.startswith("/xrpc") else resp.text())

            async def until(what: str, check: Any, limit: float = 30.0) -> Any:
                deadline = time.monotonic() + limit
                while True:
                    assert proc.returncode is None, "atmx run exited"
                    try:
                        result = await check()
                        if result:
                            return result
                    except aiohttp.ClientError:
                        pass
                    assert time.monotonic() < deadline, f"no {what} within {limit:.0f} s"
                    await asyncio.sleep(0.2)

            async def connected() -> bool:
                status, body = await get("/xrpc/_health")
                return status == 200 and body["state"] in ("live", "idle")

            await until("connected indexer", connected)
            account = await pds.create_account(handle())
            await pds.put_record(account, "at.didcomm.keyPackage", "self", keypackage_record())

            async def indexed() -> bool:
                status, _ = await get("/xrpc/directory.atmx.getIdentity", actor=account.did)
                return status == 200

            await until("indexed write", indexed)
            wrote = time.monotonic()
            states = []
            while time.monotonic() - wrote < QUIET:  # nothing written for QUIET seconds
                _, body = await get("/xrpc/directory.atmx.getIndexStatus")
                states.append((body["state"], body.get("lagSeconds")))
                await asyncio.sleep(0.5)
            _, status = await get("/xrpc/directory.atmx.getIndexStatus")
            _, health = await get("/xrpc/_health")
            _, metrics_text = await get("/metrics")
            code, out, err = await atmx_status(env)
            # the quiet spell resubscribed at least twice, and nothing new came of it
            later = await pds.create_account(handle())
            await pds.put_record(later, "at.didcomm.keyPackage", "self", keypackage_record())

            async def indexed_later() -> bool:
                code, _ = await get("/xrpc/directory.atmx.getIdentity", actor=later.did)
                return code == 200

            await until("write after the quiet spell", indexed_later, limit=STALL_TIMEOUT + 10)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        print(stderr.decode()[-5000:])  # shown when the test fails
    log = stderr.decode()

    assert status["state"] == "idle" and status["lagSeconds"] == 0
    assert status["idleSeconds"] >= QUIET - STALL_TIMEOUT
    assert not [s for s in states if s[0] in ("lagging", "disconnected")], states
    assert all(lag == 0 for _, lag in states), states
    assert health["state"] == "idle" and health["lagSeconds"] < 1 and health["idleSeconds"] >= QUIET - STALL_TIMEOUT
    assert metric(metrics_text, 'atmx_firehose_state{state="idle"}') == 1
    assert metric(metrics_text, 'atmx_firehose_state{state="lagging"}') == 0
    assert metric(metrics_text, "atmx_firehose_lag_seconds") < 1
    assert metric(metrics_text, 'atmx_firehose_reconnects_total{cause="stalled"}') >= 2
    assert code == 0 and out.startswith("firehose idle, cursor ") and ", lag 0.0s, last event" in out, (out, err)
    assert proc.returncode == 0, log[-2000:]
    assert not [line for line in log.splitlines() if " WARNING " in line or " ERROR " in line], log
    # one INFO line for the quiet spell's first resubscribe; repeats go to DEBUG
    assert log.count("no message for 3s; resubscribing from the cursor") == 1, log


async def atmx_status(env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *ATMX, "status", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class FakeStream:
    def __init__(self) -> None:
        self.last_event_at: float | None = None
        self.connected = True

    def is_connected(self, now: float) -> bool:
        return self.connected


class FakeIntake:
    def __init__(self) -> None:
        self.lag = 0.7
        self.pending = 0

    def lag_seconds(self) -> float:
        return self.lag

    def in_flight(self) -> int:
        return self.pending


def test_liveness_samples_state_lag_and_idle_time() -> None:
    from atmx.indexer.liveness import Liveness

    now = [100.0]
    stream, intake = FakeStream(), FakeIntake()
    live = Liveness(stream, intake, idle_after=10.0, clock=lambda: now[0])
    assert live.sample() == Report("idle", True, 0.7, None)  # connected, nothing received yet
    stream.last_event_at = 99.0
    assert live.sample() == Report("live", True, 0.7, 1.0)
    now[0] = 130.0  # 31 s without an event, nothing in flight: idle, and no backlog can be waiting
    assert live.sample() == Report("idle", True, 0.0, 31.0)
    intake.pending, intake.lag = 4, 75.0  # events stuck in flight for over a minute
    assert live.sample() == Report("lagging", True, 75.0, 31.0)
    stream.connected = False
    assert live.sample().state == "disconnected"
