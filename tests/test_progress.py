"""The backfill progress bar and summary."""

from __future__ import annotations

import io

from atmx.indexer.progress import Progress, format_duration, format_line


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_format_duration() -> None:
    assert format_duration(None) == "--:--"
    assert format_duration(65) == "01:05"
    assert format_duration(3725) == "1:02:05"


def test_format_line() -> None:
    line = format_line(50, 200, 3, 12.5, 12.0, width=10)
    assert line.startswith("[##--------] 50/200 repos  25.0%")
    assert "12.5/s" in line and "errors 3" in line and "ETA 00:12" in line


def test_tty_bar_rate_eta_and_summary() -> None:
    out = io.StringIO()
    clock = Clock()
    p = Progress(out, tty=True, clock=clock)
    p.start(done=10, total=110)
    for i in range(20):
        clock.t += 0.5
        p.advance(ok=i != 0)
    assert p.done == 30 and p.errors == 1
    assert abs(p.rate() - 2.0) < 0.01
    assert abs((p.eta() or 0) - 40.0) < 0.5
    p.finish()
    text = out.getvalue()
    assert text.startswith("\r[") and "30/110 repos" in text and text.endswith("\n")
    summary = p.summary({"ok": 19, "repo_deactivated": 1})
    assert "30/110 repos done (20 this run)" in summary and "2.0 repos/s" in summary
    assert "ok 19" in summary and "repo_deactivated 1" in summary


def test_non_tty_writes_lines_rarely_and_none_stream_is_silent() -> None:
    out = io.StringIO()
    clock = Clock()
    p = Progress(out, tty=False, clock=clock)
    p.start(0, 5)
    for _ in range(5):
        p.advance()
    assert out.getvalue().count("\n") == 1  # throttled to one line per 10 s
    silent = Progress(None)
    silent.advance()
    silent.finish()
    assert silent.done == 1


def test_a_run_that_did_nothing_draws_no_earlier_figures() -> None:
    """A resumed run that fails before any work must not show the last run's bar as its own."""
    out = io.StringIO()
    p = Progress(out, tty=True, clock=Clock())
    p.start(done=500, total=1000)  # finished by earlier runs
    p.finish()
    assert out.getvalue() == ""


def test_summary_by_reason() -> None:
    clock = Clock()
    p = Progress(None, clock=clock)
    p.start(done=0, total=5)
    for _ in range(5):
        clock.t += 0.2
        p.advance(ok=False)
    line = p.summary(
        {"identity_unreachable": 3, "repo_not_found": 1, "identity_invalid_did": 1},
        failed={"identity_unreachable": 3},
        skipped={"repo_not_found": 1, "identity_invalid_did": 1},
    )
    assert line == (
        "backfill: 5 repos in 00:01 (5.0/s; 5/5 candidates over all runs): 0 ok, "
        "3 failed (identity_unreachable 3), 2 skipped (identity_invalid_did 1, repo_not_found 1); "
        "run again to retry the failed repos"
    )
