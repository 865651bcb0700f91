"""What a node's answer may do to a stored inbox log (indexer/xmtp/inbox_log.py), with real signed updates."""

from __future__ import annotations

import pytest
import xmtp_keys as keys
from xmtp_keys import EthKey, InstallationKey

from atmx.indexer.xmtp.association import AssociationError
from atmx.indexer.xmtp.inbox_log import (
    LogEntry,
    LogRefused,
    check_answer,
    continuation,
    overlap_after,
    reconcile,
)


def honest_log(n: int = 4, first: int = 10, step: int = 7) -> list[LogEntry]:
    """An inbox's log as a node numbers it: ids increase with gaps (one counter for every inbox)."""
    wallet = EthKey.generate()
    create = keys.create_inbox(wallet, installation=InstallationKey.generate())
    updates = [create] + [
        keys.add_installation(create.inbox_id, wallet, InstallationKey.generate()) for _ in range(n - 1)
    ]
    return [LogEntry(first + i * step, u) for i, u in enumerate(updates)]


def refused(reason: str, call: object, *args: object) -> None:
    with pytest.raises(LogRefused) as info:
        call(*args)  # type: ignore[operator]
    assert info.value.reason == reason, info.value


def test_an_answer_is_of_the_inbox_asked_for_in_order() -> None:
    log, other = honest_log(), honest_log()
    inbox = log[0].update.inbox_id
    check_answer(inbox, 0, log)
    check_answer(inbox, log[1].sequence_id, log[2:])
    with pytest.raises(AssociationError) as info:
        check_answer(inbox, 0, other)
    assert info.value.reason == "inbox_id_mismatch"
    with pytest.raises(AssociationError):
        check_answer(inbox, 0, [*log, other[1]])  # one stray update is enough
    refused("sequence_not_increasing", check_answer, inbox, 0, list(reversed(log)))
    refused("sequence_not_increasing", check_answer, inbox, 0, [log[0], log[0]])
    refused("sequence_not_increasing", check_answer, inbox, log[2].sequence_id, log[2:])  # not after the id asked


def test_the_fetch_overlaps_the_stored_log_by_one_update() -> None:
    log = honest_log()
    assert overlap_after([]) == 0 and overlap_after(log[:1]) == 0
    assert overlap_after(log[:3]) == log[1].sequence_id
    assert continuation(log[:3], log[2:]) == log[3:]
    assert continuation(log[:3], log[2:3]) == []
    assert continuation([], log) == log
    # the last stored update missing, moved or changed: not a continuation
    assert continuation(log[:3], []) is None
    assert continuation(log[:3], log[3:]) is None
    assert continuation(log[:3], [LogEntry(log[2].sequence_id, log[3].update)]) is None


def test_the_whole_log_must_hold_every_stored_update() -> None:
    log = honest_log()
    grown = reconcile(log[:2], log)
    assert (grown.log, grown.filled) == (log, 0)
    holed = [log[0], log[2], log[3]]
    filled = reconcile(holed, log)
    assert (filled.log, filled.filled) == (log, 1)
    refused("log_rewritten", reconcile, log, log[:3])  # shrank: the newest update hidden
    refused("log_rewritten", reconcile, log, log[1:])  # cut at its start
    refused("log_rewritten", reconcile, log, [])
    swapped = [log[0], LogEntry(log[1].sequence_id, log[2].update), LogEntry(log[2].sequence_id, log[1].update), log[3]]
    refused("log_rewritten", reconcile, log, swapped)  # the same updates in another order
    renumbered = [LogEntry(e.sequence_id + 1, e.update) for e in log]
    refused("log_rewritten", reconcile, log, renumbered)


def test_another_encoding_of_a_stored_update_is_the_same_update() -> None:
    log = honest_log(2)
    reencoded = [LogEntry(e.sequence_id, type(e.update).FromString(e.update.SerializeToString())) for e in log]
    assert reconcile(log, reencoded).filled == 0
    assert continuation(log, reencoded[1:]) == []
