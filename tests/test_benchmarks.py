"""Smoke test of the benchmark harness (benchmarks/run.py --smoke): it runs end to end and its
output is sane. No timing targets here: performance figures come from `bash benchmarks/run.sh`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "results.json"
    chart = tmp / "chart.png"
    env = dict(os.environ, ATMX_BENCH_CACHE=str(tmp / "cache"))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--workers", "2", "--out", str(out), "--chart", str(chart)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert chart.stat().st_size > 10_000  # a real PNG was drawn
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| atmx (verify + PostgreSQL) |" in proc.stdout  # the markdown table
    results: dict[str, Any] = json.loads(out.read_text())
    return results


def test_corpus_has_the_network_mix(smoke: dict[str, Any]) -> None:
    counts = smoke["throughput"]["corpus_counts"]
    assert sum(counts.values()) == 2000
    assert counts["like"] > counts["post"] > 0
    for kind in ("follow", "repost", "identity", "account"):
        assert counts[kind] > 0
    assert counts.get("matched_create", 0) > 0


def test_atmx_indexed_every_binding_of_the_replay(smoke: dict[str, Any]) -> None:
    (run,) = smoke["throughput"]["runs"]["atmx"]
    assert run["events"] == 2000
    assert run["events_per_s"] > 0 and run["cpu_s"] > 0 and run["peak_rss_mib"] > 10
    # every commit was signed by its account's real key: nothing may be rejected
    assert run["rejections"] == 0, run["rejection_reasons"]
    assert run["bindings"] == run["expected_bindings"] > 0


@pytest.mark.parametrize("ceiling", ["ceiling", "ceiling-websockets"])
def test_transport_ceilings_received_every_frame(smoke: dict[str, Any], ceiling: str) -> None:
    (run,) = smoke["throughput"]["runs"][ceiling]
    assert run["frames"] == 2000
    assert run["events_per_s"] > 0
    # the peer waited to be stopped, so its CPU time could be read (NaN once a process is gone;
    # at this size it may well round to 0)
    assert run["cpu_s"] == run["cpu_s"] and run["cpu_s"] >= 0


def test_the_report_judges_the_targets(smoke: dict[str, Any]) -> None:
    from benchmarks.report import table

    text = table(smoke)
    assert "- atmx >= 50,000 events/s:" in text
    assert "within 2x of the transport ceiling, websockets library" in text


def test_profile_report_groups_samples_by_owner(tmp_path: Path) -> None:
    from benchmarks.profile_report import categorize

    prof = tmp_path / "atmx.prof"
    prof.write_text(
        "_run_once (asyncio/base_events.py:1922);Handle._run (asyncio/events.py:80);"
        "data_received (indexer/stream.py:260);decode (indexer/prefilter.py:50) 30\n"
        "_run_once (asyncio/base_events.py:1922);_commit_writes (indexer/pipeline.py:450);"
        "verify_commit_message (indexer/verify.py:150) 10\n"
        "<module> (indexer/cli.py:1);_find_and_load (<frozen importlib._bootstrap>:1176) 99\n"
        "_run_once (asyncio/base_events.py:1884);EpollSelector.select (selectors.py:468) 50\n"
    )
    counts, total = categorize(str(prof))
    assert total == 40  # imports and idle are left out
    assert counts["pre-filter: libipld decode + op paths"] == 30
    assert counts["verify a matched commit (CAR, signature, MST proof + inversion)"] == 10


def test_matched_only_corpus_is_verified_and_written(smoke: dict[str, Any]) -> None:
    matched = smoke["matched"]
    (run,) = matched["runs"]
    assert run["matched_events"] == 300
    assert run["rejections"] == 0, run["rejection_reasons"]
    assert run["bindings"] == run["expected_bindings"] > 0
    assert matched["median_matched_per_s"] > 0


def test_paced_run_measures_lag_through_the_api(smoke: dict[str, Any]) -> None:
    paced = smoke["paced"]
    assert paced["lag_targets"] > 0
    assert paced["lag_samples"] == paced["lag_targets"]  # every measured write became visible
    assert 0 < paced["lag_p50_s"] <= paced["lag_p99_s"]
    # paced at 2,000/s, 2,000 events take about a second to send
    assert paced["seconds"] >= 0.9


def test_api_rows_answer_without_errors(smoke: dict[str, Any]) -> None:
    rows = smoke["api"]["rows"]
    methods = {r["method"] for r in rows}
    assert {"getIdentity", "resolveXmtpInbox"} <= methods
    assert any(m.startswith("getIdentities") for m in methods)
    for row in rows:
        assert row["errors"] == 0, row
        assert row["requests"] > 0 and row["p50_ms"] <= row["p99_ms"]
