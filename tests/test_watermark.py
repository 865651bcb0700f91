from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from atmx.indexer.firehose.watermark import Watermark


def test_moves_only_past_contiguous_done_events() -> None:
    m = Watermark(start=10)
    for seq in (11, 12, 13):
        m.received(seq, f"t{seq}")
    m.done(12)
    assert m.value == 10  # 11 still in flight
    m.done(11)
    assert (m.value, m.value_time) == (12, "t12")
    m.done(13)
    assert m.value == 13 and len(m) == 0


def test_value_if_done_counts_the_finishing_event() -> None:
    m = Watermark()
    m.received(5, "a")
    m.received(7, "b")
    m.received(9, "c")
    m.done(7)
    assert m.value_if_done(5) == (7, "b")
    assert m.value_if_done(9) == (None, None)
    assert m.value is None


def test_gaps_in_seq_are_legal() -> None:
    m = Watermark(start=100)
    m.received(250, None)
    m.done(250)
    assert m.value == 250


@given(st.lists(st.integers(min_value=1, max_value=10_000), unique=True, min_size=1, max_size=200), st.randoms())
def test_value_is_never_past_an_unfinished_event(seqs: list[int], rnd: random.Random) -> None:
    seqs.sort()
    m = Watermark()
    for s in seqs:
        m.received(s, None)
    order = seqs[:]
    rnd.shuffle(order)
    finished: set[int] = set()
    for s in order:
        predicted = m.value_if_done(s)[0]
        m.done(s)
        finished.add(s)
        assert m.value == predicted
        if m.value is not None:
            assert all(x in finished for x in seqs if x <= m.value)
            unfinished = [x for x in seqs if x not in finished]
            assert not unfinished or m.value < min(unfinished)
    assert m.value == seqs[-1]


def test_skipped_events_move_the_mark_only_when_nothing_before_them_is_pending() -> None:
    m = Watermark()
    m.skip(1, "t1")
    assert (m.value, m.value_time, len(m)) == (1, "t1", 0)
    m.received(2, "t2")
    m.skip(3, "t3")
    m.skip(4, "t4")
    assert m.value == 1 and len(m) == 1  # 2 holds the mark back
    m.received(5, "t5")
    m.skip(6, "t6")
    m.done(5)
    assert m.value == 1
    m.done(2)  # 2, the skips after it, 5 and the skip after it are all done
    assert (m.value, m.value_time, len(m)) == (6, "t6", 0)
    assert m.last_received == 6


@given(st.lists(st.tuples(st.booleans(), st.randoms()), min_size=1, max_size=300))
def test_skips_never_carry_the_mark_past_a_pending_event(plan: list[tuple[bool, random.Random]]) -> None:
    m = Watermark()
    pending: list[int] = []
    for seq, (skipped, rnd) in enumerate(plan, start=1):
        if skipped:
            m.skip(seq, None)
        else:
            m.received(seq, None)
            pending.append(seq)
        if pending and rnd.random() < 0.5:
            m.done(pending.pop(rnd.randrange(len(pending))))
        assert len(m) == len(pending)
        if pending:
            assert m.value is None or m.value < min(pending)
        else:
            assert m.value == seq
