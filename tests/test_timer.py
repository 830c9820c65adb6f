"""Tests for archiver.timer.Timer, the default timer of the camera (real threads, short periods)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from archiver.timer import Entry, Timer


def wait_until(predicate, timeout: float = 3.0) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()


@pytest.fixture
def timer():
    t = Timer()
    yield t
    t.stop()


class TestEntry:
    def test_call_and_cancel(self):
        """An entry calls its function with its arguments and can be cancelled."""
        entry = Entry(lambda a, b=0: a + b, 1.0, (1,), {"b": 2})
        assert entry() == 3
        assert not entry.cancelled
        entry.cancel()
        assert entry.cancelled
        assert "every 1.0s" in repr(entry)


class TestTimer:
    def test_first_run_is_one_period_later(self, timer):
        """Nothing runs at once: the first call comes one period after scheduling."""
        calls = []
        started = time.monotonic()
        timer.call_repeatedly(0.05, lambda: calls.append(time.monotonic()))
        assert calls == []
        assert wait_until(lambda: calls)
        assert calls[0] - started >= 0.045

    def test_fixed_rate_without_drift(self, timer):
        """Entries that take 5 ms on a 20 ms period keep a 20 ms rate: run time does not add up."""
        period, runs = 0.02, 16
        calls: list[float] = []
        done = threading.Event()

        def work():
            calls.append(time.monotonic())
            time.sleep(0.005)
            if len(calls) >= runs:
                done.set()

        entry = timer.call_repeatedly(period, work)
        assert done.wait(5)
        entry.cancel()
        mean_interval = (calls[runs - 1] - calls[0]) / (runs - 1)
        # A timer that re-arms after each run would average >= 25 ms here.
        assert period * 0.95 <= mean_interval <= period * 1.12, calls

    def test_overrun_skips_missed_beats(self, timer):
        """An entry that overruns its period skips the missed runs and keeps its phase."""
        period = 0.02
        calls: list[float] = []

        def work():
            calls.append(time.monotonic())
            if len(calls) == 1:
                time.sleep(period * 2.5)

        entry = timer.call_repeatedly(period, work)
        assert wait_until(lambda: len(calls) >= 3)
        entry.cancel()
        periods = (calls[1] - calls[0]) / period
        assert round(periods) >= 3  # the missed beats were not run back to back
        assert abs(periods - round(periods)) < 0.3  # and the schedule kept its phase

    def test_arguments_are_passed(self, timer):
        """``call_repeatedly(secs, fun, *args, **kwargs)`` passes the arguments on."""
        got = []
        timer.call_repeatedly(0.01, lambda *a, **kw: got.append((a, kw)), 1, 2, x=3)
        assert wait_until(lambda: got)
        assert got[0] == ((1, 2), {"x": 3})

    def test_survives_a_raising_entry(self, timer, caplog):
        """An entry that raises is logged and keeps running, and other entries are unaffected."""
        failures, good = [], []

        def bad():
            failures.append(1)
            raise RuntimeError("entry blew up")

        with caplog.at_level(logging.ERROR, logger="archiver.timer"):
            timer.call_repeatedly(0.01, bad)
            timer.call_repeatedly(0.01, lambda: good.append(1))
            assert wait_until(lambda: len(failures) >= 3 and len(good) >= 3)
        assert "Error in timer entry" in caplog.text
        assert "entry blew up" in caplog.text
        assert timer.running

    def test_cancel_stops_an_entry(self, timer):
        """A cancelled entry is not run again while the others go on."""
        cancelled, other = [], []
        entry = timer.call_repeatedly(0.01, lambda: cancelled.append(1))
        timer.call_repeatedly(0.01, lambda: other.append(1))
        assert wait_until(lambda: len(cancelled) >= 2)
        entry.cancel()
        time.sleep(0.012)  # an in-flight run may still finish
        count, seen_other = len(cancelled), len(other)
        assert wait_until(lambda: len(other) >= seen_other + 3)
        assert len(cancelled) == count
        assert len(timer) == 1

    def test_stop_joins_the_thread(self):
        """``stop()`` ends the thread and the timer refuses new entries."""
        timer = Timer()
        assert not timer.running
        ran = []
        timer.call_repeatedly(0.01, lambda: ran.append(1))
        assert timer.running
        assert wait_until(lambda: ran)
        thread = timer._thread
        timer.stop()
        assert not thread.is_alive()
        assert not timer.running
        with pytest.raises(RuntimeError, match="timer is stopped"):
            timer.call_repeatedly(1, print)

    def test_stop_without_start(self):
        """Stopping a timer that never started is harmless."""
        timer = Timer()
        timer.stop()
        assert not timer.running

    @pytest.mark.parametrize("secs", [0, -1])
    def test_interval_must_be_positive(self, timer, secs):
        """A zero or negative interval is refused."""
        with pytest.raises(ValueError, match="interval must be > 0"):
            timer.call_repeatedly(secs, print)

    def test_thread_is_a_daemon(self, timer):
        """The timer thread never keeps the interpreter alive."""
        timer.call_repeatedly(10, print)
        assert timer._thread.daemon
