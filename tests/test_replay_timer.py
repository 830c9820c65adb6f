"""archiver.replay_timer: the Celery-compatible timer driven by event time, and the replay
clock's rule that lone outliers and a minority of bad clocks never move it."""

from __future__ import annotations

import logging
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archiver.replay_timer import STEP, WINDOW, ReplayClock, ReplayTimer

from .helpers import YEAR_702, YEAR_2100


def test_entries_wait_for_the_first_event_then_follow_event_time():
    """Entries wait for the first event then follow event time."""
    timer, calls = ReplayTimer(), []
    timer.call_repeatedly(1.0, lambda: calls.append(timer.now))
    timer.call_repeatedly(2.5, lambda: calls.append(("cleanup", timer.now)))
    assert timer.now is None and len(timer) == 2
    timer.advance(100.0)  # sets the clock: nothing due yet
    assert calls == [] and timer.now == 100.0
    timer.advance(100.99)
    assert calls == []
    timer.advance(101.0)  # due exactly now: runs before the event at 101.0 is applied
    assert calls == [101.0]
    timer.advance(103.2)
    assert calls == [101.0, 102.0, ("cleanup", 102.5), 103.0]
    assert timer.now == 103.2


def test_the_clock_never_goes_back():
    """The clock never goes back."""
    timer, calls = ReplayTimer(), []
    timer.call_repeatedly(1.0, lambda: calls.append(timer.now))
    timer.advance(10.0)
    timer.advance(12.5)
    timer.advance(11.0)  # an event from a worker whose clock is behind
    assert timer.now == 12.5 and calls == [11.0, 12.0]


def test_entry_scheduled_after_the_clock_started():
    """Entry scheduled after the clock started."""
    timer, calls = ReplayTimer(start=50.0), []
    timer.call_repeatedly(0.5, lambda: calls.append(timer.now))
    timer.advance(51.0)
    assert calls == [50.5, 51.0]


def test_cancel_and_errors():
    """A cancelled entry stops firing; an entry that raises does not stop the others."""
    timer, calls = ReplayTimer(), []

    def boom():
        calls.append("boom")
        raise RuntimeError("in a timer entry")

    entry = timer.call_repeatedly(1.0, boom)
    other = timer.call_repeatedly(1.0, lambda: calls.append("ok"))
    timer.advance(0.0)
    timer.advance(2.0)  # errors are logged; the entry keeps its schedule
    assert calls == ["boom", "ok", "boom", "ok"]
    entry.cancel()
    timer.advance(3.0)
    assert calls[-1] == "ok" and calls.count("boom") == 2
    other.cancel()
    assert len(timer) == 0


def test_an_entry_can_cancel_itself():
    """An entry can cancel itself."""
    timer, calls = ReplayTimer(), []
    holder = {}

    def once():
        calls.append(timer.now)
        holder["entry"].cancel()

    holder["entry"] = timer.call_repeatedly(1.0, once)
    timer.advance(0.0)
    timer.advance(10.0)
    assert calls == [1.0]


def test_a_jump_of_the_clock_runs_at_most_max_catchup_beats(caplog):
    """A jump of the clock runs at most max catchup beats."""
    timer, calls = ReplayTimer(max_catchup=5), []
    timer.call_repeatedly(1.0, lambda: calls.append(timer.now))
    timer.advance(0.0)
    timer.advance(3.0)  # a short gap: every beat
    assert calls == [1.0, 2.0, 3.0]
    with caplog.at_level(logging.WARNING, "archiver.replay"):
        timer.advance(1e9)  # a bogus timestamp: the newest 5 beats, not a billion
    assert calls[3:] == [1e9 - 4, 1e9 - 3, 1e9 - 2, 1e9 - 1, 1e9]
    assert timer.skipped == 1e9 - 3 - 5
    assert "Replayed clock jumped" in caplog.text


def test_bad_intervals():
    """A zero interval or max_catchup raises ValueError."""
    with pytest.raises(ValueError):
        ReplayTimer().call_repeatedly(0, lambda: None)
    with pytest.raises(ValueError):
        ReplayTimer(max_catchup=0)


def test_a_short_replay_starts_its_clock_at_the_end():
    """A short replay starts its clock at the end."""
    clock = ReplayClock()
    assert clock.offer(1000.0) is None and clock.offer(1001.0) is None
    assert clock.finish() == 1001.0 and clock.start == 1000.0


TIMESTAMPS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([YEAR_2100, YEAR_702, 0.0, 1e11, -1.0, 253_402_300_800.0]),
    st.text(max_size=5),
    st.none(),
    st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(
    base=st.lists(st.floats(0, 600), min_size=4, max_size=40),
    outliers=st.lists(st.tuples(st.integers(0, 40), TIMESTAMPS), max_size=2),
)
def test_clock_rule_ignores_up_to_two_outliers(base, outliers):
    """Whatever two timestamps are mixed into a stream, the clock stays within its range."""
    start = 1_795_622_260.0
    stream = [start + t for t in base]
    for position, ts in outliers:
        stream.insert(position, ts)
    clock = ReplayClock()
    seen = []
    for ts in stream:
        moved = clock.offer(ts)
        if moved is not None:
            seen.append(moved)
    seen.append(clock.finish())
    assert all(math.isfinite(t) and start <= t <= start + 600 for t in seen)
    assert seen == sorted(seen)  # never back


@settings(max_examples=100, deadline=None)
@given(gap=st.floats(STEP + 40, 1e9), old=st.integers(WINDOW, 3 * WINDOW))
def test_clock_rule_takes_a_gap_once_most_recent_events_agree(gap, old):
    """A real gap (the recording paused): taken once half of the latest events are past
    it, and from then on the clock follows them; fewer never move it."""
    clock = ReplayClock()
    for i in range(old):
        clock.offer(1000.0 + i * 0.5)
    end = 1000.0 + (old - 1) * 0.5
    after = [end + gap + i * 0.5 for i in range(WINDOW // 2 + 10)]
    for ts in after[: WINDOW // 2 - 1]:
        clock.offer(ts)
    assert clock.now == end  # fewer than half of the window: not yet
    for ts in after[WINDOW // 2 - 1 :]:
        clock.offer(ts)
    assert clock.finish() == after[-1]


@settings(max_examples=100, deadline=None)
@given(
    ahead=st.floats(STEP * 1.01, 1e9),
    share=st.floats(0.0, 0.45),
    seed=st.integers(0, 2**32 - 1),
)
def test_clock_rule_ignores_a_bad_clock_that_is_not_most_of_the_stream(ahead, share, seed):
    """A worker whose clock is ``ahead`` seconds off, sending up to 45% of the events (at
    first never two in a row, later in bursts of five), never moves the clock more than
    a step past the real events: it would take most of the latest 64 events (two thirds
    of the first 9 or more, before the clock starts)."""
    import random

    rng = random.Random(seed)
    clock = ReplayClock()
    real = 1_795_622_260.0
    for i in range(2000):
        real += 0.1
        # at the start, at most every other event; then bursts of up to five in a row
        slot = i % 2 == 1 if i < 2 * WINDOW else i % 10 < 5
        bad = slot and rng.random() < share
        clock.offer(real + ahead if bad else real)
        assert clock.now is None or clock.now <= real + STEP
