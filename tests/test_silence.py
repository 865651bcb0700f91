"""firehose/silence.py: when silence on the socket means a stuck upstream."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from atmx.indexer.firehose.silence import SilenceProbe


def test_a_silence_is_a_stall_only_if_older_events_arrive_after_it() -> None:
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
