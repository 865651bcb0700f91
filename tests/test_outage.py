"""xmtp/outage.py: an unreachable XMTP environment is logged as one outage."""

from __future__ import annotations

import logging

import pytest

from atmx.indexer.xmtp.outage import SUMMARY_EVERY, OutageLog


def test_an_outage_is_one_line_when_it_starts_a_summary_while_it_lasts_and_one_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = logging.getLogger("atmx.test.outage")
    outages = OutageLog(log, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="atmx.test.outage"):
        for i in range(15):
            outages.failed("production", f"did:plc:{i}", "unavailable")
        assert outages.is_down("production") and not outages.is_down("dev")
        assert len(caplog.records) == 1 and "did:plc:0" in caplog.records[0].getMessage()
        now[0] = SUMMARY_EVERY + 1
        outages.failed("production", "did:plc:x", "unavailable")
        outages.answered("production")
        outages.answered("production")  # already over: nothing more
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "still unreachable" in lines[1] and "16 checks deferred" in lines[1]
    assert "reachable again" in lines[2] and "16 checks were deferred" in lines[2]
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING", "INFO"]
