"""Tests for archiver.camera.Polaroid, checked against Celery's own Polaroid where they differ."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from celery import Celery
from celery.events.snapshot import Polaroid as CeleryPolaroid
from celery.events.state import State as CeleryState
from celery.utils.timer2 import Timer as CeleryTimer
from kombu.asynchronous.timer import Timer as KombuTimer

from archiver.camera import Polaroid
from archiver.ratelimit import TokenBucket, parse_rate
from archiver.state import State
from archiver.timer import Timer

from .helpers import FakeTimer


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recording(Polaroid):
    """A camera that records what it sees and the order of calls in ``log``."""

    fail = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.log: list[tuple] = []
        self.succeeded: set[str] = set()

    def on_shutter(self, state):
        self.log.append(("on_shutter", state))
        if self.fail:
            raise RuntimeError("on_shutter failed")
        tasks = getattr(state, "tasks", {})
        self.succeeded |= {u for u, t in tasks.items() if t.state == "SUCCESS"}

    def on_cleanup(self):
        self.log.append(("on_cleanup",))


class Clearing(Recording):
    """A recording camera with ``clear_after = True``."""

    clear_after = True


class CeleryClearing(CeleryPolaroid):
    """Celery's Polaroid with ``clear_after = True``, recording finished tasks."""

    clear_after = True
    fail = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.succeeded: set[str] = set()

    def on_shutter(self, state):
        if self.fail:
            raise RuntimeError("on_shutter failed")
        self.succeeded |= {u for u, t in state.tasks.items() if t.state == "SUCCESS"}


@pytest.fixture
def state() -> State:
    return State()


@pytest.fixture
def celery_app():
    app = Celery("test_camera", set_as_current=False)
    yield app
    app.close()


@pytest.fixture
def signal_log():
    """Connect a receiver to both class-level signals; yield the list they append to."""
    log: list[tuple] = []

    def on_shutter_signal(**kwargs):
        log.append(("shutter_signal", kwargs))

    def on_cleanup_signal(**kwargs):
        log.append(("cleanup_signal", kwargs))

    Polaroid.shutter_signal.connect(on_shutter_signal)
    Polaroid.cleanup_signal.connect(on_cleanup_signal)
    yield log
    Polaroid.shutter_signal.disconnect(on_shutter_signal)
    Polaroid.cleanup_signal.disconnect(on_cleanup_signal)


def feed(state, events) -> None:
    for event in events:
        state.event(dict(event))


def succeeded_in(events) -> set[str]:
    return {e["uuid"] for e in events if e["type"] == "task-succeeded"}


def wait_until(predicate, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()


class TestConstructor:
    def test_attributes(self, state, fake_timer):
        """The camera keeps the app, state, frequencies and timer; no maxrate is falsy."""
        app = object()
        cam = Polaroid(state, freq=2.5, cleanup_freq=60, timer=fake_timer, app=app)
        assert cam.app is app
        assert cam.state is state
        assert cam.freq == 2.5
        assert cam.cleanup_freq == 60
        assert cam.timer is fake_timer
        assert cam.logger.name == "archiver.camera"
        assert not cam.maxrate

    def test_defaults(self, state):
        """Defaults match Celery: 1 s captures, hourly cleanup, no app, no clearing."""
        cam = Polaroid(state)
        assert cam.freq == 1.0
        assert cam.cleanup_freq == 3600.0
        assert cam.app is None
        assert cam.maxrate is None
        assert cam.clear_after is False
        assert Polaroid.timer is None

    def test_default_timer_is_not_started(self, state):
        """Without a timer the camera makes an archiver Timer, which starts only on install."""
        cam = Polaroid(state)
        assert isinstance(cam.timer, Timer)
        assert not cam.timer.running

    def test_class_level_timer(self, state, fake_timer):
        """A subclass may set a shared timer on the class."""

        class Shared(Polaroid):
            timer = fake_timer

        assert Shared(state).timer is fake_timer
        other = FakeTimer()
        assert Shared(state, timer=other).timer is other

    @pytest.mark.parametrize("make_timer", [Timer, KombuTimer], ids=["archiver", "kombu"])
    def test_empty_timer_is_kept(self, state, make_timer):
        """A given timer with no entries (falsy through ``__len__``) is used, not replaced."""
        timer = make_timer()
        assert not timer
        assert Polaroid(state, timer=timer).timer is timer

    @pytest.mark.parametrize("name", ["freq", "cleanup_freq"])
    @pytest.mark.parametrize("value", [0, -1, -0.5, "soon", None, float("nan")])
    def test_frequencies_must_be_positive(self, state, fake_timer, name, value):
        """``freq`` and ``cleanup_freq`` must be numbers of seconds > 0."""
        with pytest.raises(ValueError, match=rf"^{name} must be a number of seconds > 0"):
            Polaroid(state, timer=fake_timer, **{name: value})

    @pytest.mark.parametrize(
        ("maxrate", "per_second"),
        [("10/s", 10.0), ("100/m", 100 / 60), ("1/h", 1 / 3600), (5, 5.0), ("0.5", 0.5)],
    )
    def test_maxrate_forms(self, state, fake_timer, maxrate, per_second):
        """A valid maxrate becomes a token bucket of capacity 1 at that rate per second."""
        cam = Polaroid(state, maxrate=maxrate, timer=fake_timer)
        assert isinstance(cam.maxrate, TokenBucket)
        assert cam.maxrate.fill_rate == pytest.approx(per_second)
        assert cam.maxrate.capacity == 1

    @pytest.mark.parametrize("maxrate", ["fast", "1/d", "-1/s", 0, ""])
    def test_bad_maxrate(self, state, fake_timer, maxrate):
        """A bad maxrate raises ValueError naming the accepted forms."""
        with pytest.raises(ValueError, match=r"expected 'N/s', 'N/m', 'N/h', or a positive number"):
            Polaroid(state, maxrate=maxrate, timer=fake_timer)


class TestInstall:
    def test_schedules_capture_and_cleanup(self, state, fake_timer):
        """``install`` schedules capture every freq and cleanup every cleanup_freq."""
        cam = Polaroid(state, freq=2.0, cleanup_freq=30.0, timer=fake_timer)
        cam.install()
        capture, cleanup = fake_timer.entries
        assert (capture.secs, capture.fun) == (2.0, cam.capture)
        assert (cleanup.secs, cleanup.fun) == (30.0, cam.cleanup)
        assert not capture.cancelled
        assert not cleanup.cancelled

    def test_nothing_runs_at_install(self, state, fake_timer, signal_log):
        """The first capture is the timer's business, one period later: install shoots nothing."""
        cam = Recording(state, timer=fake_timer)
        cam.install()
        assert cam.log == []
        assert signal_log == []

    def test_install_twice(self, state, fake_timer):
        """A second install does not schedule the entries again."""
        cam = Polaroid(state, timer=fake_timer)
        cam.install()
        cam.install()
        assert len(fake_timer.entries) == 2

    def test_entries_run_capture_and_cleanup(self, state, fake_timer, signal_log):
        """Firing the entries takes a snapshot and runs the cleanup."""
        cam = Recording(state, timer=fake_timer)
        cam.install()
        capture, cleanup = fake_timer.entries
        capture()
        cleanup()
        assert [entry[0] for entry in cam.log] == ["on_shutter", "on_cleanup"]


class TestShutter:
    def test_signal_then_hook(self, state, fake_timer, signal_log):
        """``shutter`` sends shutter_signal with sender=state, then calls on_shutter(state)."""
        cam = Recording(state, timer=fake_timer)
        order = []
        cam.shutter_signal.connect(keep := lambda **kw: order.append("signal"))
        cam.on_shutter = lambda s: order.append(("hook", s))
        try:
            assert cam.shutter() is True
        finally:
            cam.shutter_signal.disconnect(keep)
        assert order == ["signal", ("hook", state)]
        [(name, kwargs)] = signal_log
        assert name == "shutter_signal"
        assert kwargs["sender"] is state
        assert kwargs["signal"] is Polaroid.shutter_signal
        assert cam.snapshots_taken == 1

    def test_hook_exception_propagates(self, state, fake_timer):
        """An exception in on_shutter propagates out of a direct shutter()."""
        cam = Recording(state, timer=fake_timer)
        cam.fail = True
        with pytest.raises(RuntimeError, match="on_shutter failed"):
            cam.shutter()

    def test_does_not_lock_or_clear(self, fake_timer):
        """A direct shutter() does not freeze the state and does not clear it, as in Celery."""
        state = State()
        locked = []
        cam = Clearing(state, timer=fake_timer)
        cam.on_shutter = lambda s: locked.append(s._mutex.locked())
        state.event({"type": "other-event"})
        cam.shutter()
        assert locked == [False]
        assert state.event_count == 1


class TestCleanup:
    def test_signal_then_hook(self, state, fake_timer, signal_log):
        """``cleanup`` sends cleanup_signal with sender=state, then calls on_cleanup()."""
        cam = Recording(state, timer=fake_timer)
        order = []
        cam.cleanup_signal.connect(keep := lambda **kw: order.append("signal"))
        cam.on_cleanup = lambda: order.append("hook")
        try:
            cam.cleanup()
        finally:
            cam.cleanup_signal.disconnect(keep)
        assert order == ["signal", "hook"]
        [(name, kwargs)] = signal_log
        assert name == "cleanup_signal"
        assert kwargs["sender"] is state

    def test_not_rate_limited(self, state, fake_timer):
        """The rate limit applies to snapshots only, never to cleanup."""
        cam = Recording(state, maxrate="1/h", timer=fake_timer)
        for _ in range(3):
            cam.cleanup()
        assert cam.log == [("on_cleanup",)] * 3


class FreezeSpy(State):
    """An archiver State that records its freeze_while calls."""

    def __init__(self) -> None:
        super().__init__()
        self.freezes: list[dict] = []

    def freeze_while(self, fun, *args, **kwargs):
        self.freezes.append(dict(kwargs))
        return super().freeze_while(fun, *args, **kwargs)


class TestCapture:
    def test_goes_through_freeze_while(self, fake_timer, signal_log):
        """``capture`` runs the shutter inside state.freeze_while, with the state locked."""
        state = FreezeSpy()
        cam = Recording(state, timer=fake_timer)
        locked = []
        cam.on_shutter = lambda s: locked.append(s._mutex.locked())
        assert cam.capture() is True
        assert len(state.freezes) == 1
        assert locked == [True]
        assert len(signal_log) == 1

    def test_state_without_freeze_while(self, fake_timer, signal_log):
        """A state without freeze_while is shuttered directly."""
        plain = object()
        cam = Recording(plain, timer=fake_timer)
        assert cam.capture() is True
        assert cam.log == [("on_shutter", plain)]
        assert signal_log[0][1]["sender"] is plain

    def test_keeps_state_without_clear_after(self, small_events, fake_timer):
        """With clear_after False (the default) a capture leaves the state as it was."""
        state = State()
        feed(state, small_events)
        tasks, count = len(state.tasks), state.event_count
        Recording(state, timer=fake_timer).capture()
        assert (len(state.tasks), state.event_count) == (tasks, count)

    def test_clear_after(self, small_events, fake_timer):
        """With clear_after a good shot clears the state: counters zeroed, ready tasks dropped."""
        state = State()
        feed(state, small_events[:500])
        unready = {u for u, t in state.tasks.items() if not t.ready}
        assert unready
        Clearing(state, timer=fake_timer).capture()
        assert state.event_count == 0
        assert state.task_count == 0
        assert set(state.tasks) == unready
        assert len(state.workers) == 0

    def test_clear_after_with_celery_state(self, small_events, fake_timer):
        """The camera works with Celery's State: captures under its lock and clears it."""
        state = CeleryState()
        feed(state, small_events)
        cam = Clearing(state, timer=fake_timer)
        locked = []
        on_shutter = cam.on_shutter
        cam.on_shutter = lambda s: (locked.append(s._mutex.locked()), on_shutter(s))
        assert cam.capture() is True
        assert locked == [True]
        assert cam.succeeded == succeeded_in(small_events)
        assert state.event_count == 0
        assert all(not t.ready for t in state.tasks.values())

    def test_capture_with_celery_state(self, small_events, fake_timer, signal_log):
        """Without clear_after, capturing Celery's State keeps it intact."""
        state = CeleryState()
        feed(state, small_events)
        cam = Recording(state, timer=fake_timer)
        cam.capture()
        assert cam.succeeded == succeeded_in(small_events)
        assert state.event_count == len(small_events)
        assert signal_log[0][1]["sender"] is state

    def test_foreign_state_without_private_clear(self, fake_timer):
        """A state with freeze_while but no ``_clear`` is cleared by its own freeze_while
        (clear_after=True), and only for a shot the rate limit did not skip."""
        minimal = MinimalState()
        cam = Clearing(minimal, maxrate="1/h", timer=fake_timer)
        assert cam.capture() is True
        assert cam.capture() is False
        assert minimal.cleared == 1
        assert minimal.calls == [(cam.shutter, (), {"clear_after": True})]


class MinimalState:
    """All a state must offer, as in Celery: ``freeze_while(fun, *args, clear_after=False)``."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.cleared = 0
        self.frozen = False

    def freeze_while(self, fun, *args, clear_after=False):
        self.calls.append((fun, args, {"clear_after": clear_after}))
        self.frozen = True
        try:
            return fun(*args)
        finally:
            self.frozen = False
            if clear_after:
                self.cleared += 1


class TestMinimalState:
    """Every camera method works on a state with only Celery's freeze_while."""

    def test_capture_calls_freeze_while_as_celery(self, fake_timer, celery_app):
        """capture() calls ``freeze_while(shutter, clear_after=…)``, exactly as Celery's camera."""
        ours, theirs = MinimalState(), MinimalState()
        cam = Recording(ours, timer=fake_timer)
        celery_cam = CeleryPolaroid(theirs, timer=fake_timer, app=celery_app)
        assert cam.capture() is True
        celery_cam.capture()
        assert [(f.__name__, a, k) for f, a, k in ours.calls] == [
            (f.__name__, a, k) for f, a, k in theirs.calls
        ]
        assert cam.log == [("on_shutter", ours)] and ours.cleared == 0

    def test_shutter_runs_while_frozen(self, fake_timer):
        """on_shutter sees the state frozen."""
        cam = Recording(MinimalState(), timer=fake_timer)
        frozen = []
        cam.on_shutter = lambda s: frozen.append(s.frozen)
        cam.capture()
        assert frozen == [True]

    def test_install_and_cancel_take_the_final_snapshot_past_maxrate(self, fake_timer):
        """Install and cancel take the final snapshot past maxrate."""
        state = MinimalState()
        cam = Recording(state, maxrate="1/h", timer=fake_timer)
        cam.install()
        capture, cleanup = fake_timer.entries
        capture()
        capture()  # skipped by maxrate
        cleanup()
        cam.cancel()  # the final snapshot is taken anyway
        assert [e[0] for e in cam.log] == ["on_shutter", "on_cleanup", "on_shutter"]
        assert cam.snapshots_taken == 2 and cam.snapshots_skipped == 1
        assert capture.cancelled and cleanup.cancelled
        assert all(k == {"clear_after": False} for _, _, k in state.calls)

    def test_final_snapshot_with_clear_after(self, fake_timer):
        """Final snapshot with clear after."""
        state = MinimalState()
        cam = Clearing(state, maxrate="1/h", timer=fake_timer)
        cam.install()
        assert cam.capture() is True and cam.capture() is False
        cam.cancel()
        assert cam.snapshots_taken == 2 and state.cleared == 2

    def test_context_manager(self, fake_timer):
        """Leaving the with block takes a final shot past maxrate and cancels the timers."""
        state = MinimalState()
        with Recording(state, maxrate="1/h", timer=fake_timer) as cam:
            assert cam.capture() is True
        assert len(cam.log) == 2  # the final one bypasses maxrate
        assert [e.cancelled for e in fake_timer.entries] == [True, True]

    def test_force_is_never_passed_to_the_state(self, fake_timer):
        """Force is never passed to the state."""
        state = MinimalState()
        cam = Recording(state, maxrate="1/h", timer=fake_timer)
        assert cam.capture() is True
        assert cam.capture(force=True) is True
        assert cam.capture() is False
        assert {tuple(k) for _, _, k in state.calls} == {("clear_after",)}


class TestCancel:
    def test_final_capture_then_cancel_both(self, state, fake_timer):
        """``cancel`` takes one last capture, then cancels both entries; cleanup does not run."""
        cam = Recording(state, timer=fake_timer)
        cam.install()
        capture, cleanup = fake_timer.entries
        seen = []
        cam.on_shutter = lambda s: seen.append((capture.cancelled, cleanup.cancelled))
        cam.cancel()
        assert seen == [(False, False)]
        assert capture.cancelled
        assert cleanup.cancelled
        assert ("on_cleanup",) not in cam.log

    def test_flush_ignores_maxrate(self, state, fake_timer):
        """The final capture is taken even when the rate limit would skip it."""
        cam = Recording(state, maxrate="1/h", timer=fake_timer)
        cam.install()
        assert cam.capture() is True
        assert cam.capture() is False
        cam.cancel()
        assert len(cam.log) == 2

    def test_twice(self, state, fake_timer):
        """A second cancel does nothing: no second flush, no error."""
        cam = Recording(state, timer=fake_timer)
        cam.install()
        cam.cancel()
        cam.cancel()
        assert len(cam.log) == 1

    def test_before_install(self, state, fake_timer):
        """Cancelling a camera that was never installed is harmless and shoots nothing."""
        cam = Recording(state, timer=fake_timer)
        cam.cancel()
        assert cam.log == []
        assert fake_timer.entries == []

    def test_entries_cancelled_when_flush_fails(self, state, fake_timer):
        """If the final capture raises, both entries are still cancelled and the error escapes."""
        cam = Recording(state, timer=fake_timer)
        cam.install()
        cam.fail = True
        with pytest.raises(RuntimeError, match="on_shutter failed"):
            cam.cancel()
        assert all(entry.cancelled for entry in fake_timer.entries)

    def test_install_again_after_cancel(self, state, fake_timer):
        """A cancelled camera can be installed again."""
        cam = Polaroid(state, timer=fake_timer)
        cam.install()
        cam.cancel()
        cam.install()
        assert len(fake_timer.entries) == 4
        assert not fake_timer.entries[2].cancelled


class TestContextManager:
    def test_enter_installs_exit_cancels(self, state, fake_timer):
        """``with cam:`` installs on enter (returning the camera), cancels with a flush on exit."""
        cam = Recording(state, timer=fake_timer)
        with cam as entered:
            assert entered is cam
            assert len(fake_timer.entries) == 2
            assert cam.log == []
        assert [e.cancelled for e in fake_timer.entries] == [True, True]
        assert len(cam.log) == 1

    def test_exceptions_propagate(self, state, fake_timer):
        """An exception in the body is not swallowed, and the flush still happens."""
        cam = Recording(state, timer=fake_timer)
        with pytest.raises(KeyError, match="body"), cam:
            raise KeyError("body")
        assert len(cam.log) == 1
        assert all(e.cancelled for e in fake_timer.entries)


class TestMaxrate:
    def test_one_per_hour(self, state, fake_timer, signal_log):
        """With maxrate '1/h', 90 rapid shutters deliver exactly one snapshot."""
        cam = Recording(state, maxrate="1/h", timer=fake_timer)
        results = [cam.shutter() for _ in range(90)]
        assert results.count(True) == 1
        assert results[0] is True
        assert len(signal_log) == 1
        assert len(cam.log) == 1
        assert (cam.snapshots_taken, cam.snapshots_skipped) == (1, 89)

    def test_same_as_celery(self, celery_app, fake_timer):
        """Celery's Polaroid also delivers exactly one of 90 shutters at '1/h'."""
        delivered = []

        def receiver(**kwargs):
            delivered.append(kwargs["sender"])

        CeleryPolaroid.shutter_signal.connect(receiver)
        try:
            cam = CeleryPolaroid(CeleryState(), maxrate="1/h", timer=fake_timer, app=celery_app)
            for _ in range(90):
                cam.shutter()
        finally:
            CeleryPolaroid.shutter_signal.disconnect(receiver)
        assert len(delivered) == 1

    def test_refills(self, state, fake_timer):
        """After the bucket refills the next shot goes through."""
        clock = FakeClock()
        cam = Recording(state, timer=fake_timer)
        cam.maxrate = TokenBucket(parse_rate("2/s"), capacity=1, clock=clock)
        assert [cam.capture(), cam.capture()] == [True, False]
        clock.now += 0.5
        assert cam.capture() is True


class TestNoDataLoss:
    """Where Celery's Polaroid with clear_after loses events and archiver does not."""

    def test_skipped_capture_does_not_clear(self, small_events, fake_timer, celery_app):
        """A capture skipped by maxrate keeps the events; the next allowed shot records them."""
        first, second = small_events[:400], small_events[400:800]
        lost_if_cleared = succeeded_in(second) - succeeded_in(first)
        assert lost_if_cleared

        clock = FakeClock()
        state = State()
        cam = Clearing(state, maxrate="1/h", timer=fake_timer)
        cam.maxrate = TokenBucket(parse_rate("1/h"), capacity=1, clock=clock)
        feed(state, first)
        assert cam.capture() is True
        feed(state, second)
        assert cam.capture() is False
        assert state.event_count == len(second)
        assert lost_if_cleared <= set(state.tasks)
        clock.now += 3600
        assert cam.capture() is True
        assert lost_if_cleared <= cam.succeeded

        celery_state = CeleryState()
        ccam = CeleryClearing(celery_state, maxrate="1/h", timer=FakeTimer(), app=celery_app)
        feed(celery_state, first)
        ccam.capture()
        feed(celery_state, second)
        ccam.capture()  # skipped by the bucket, but Celery clears anyway
        assert celery_state.event_count == 0
        ccam.maxrate = None  # let the next shot through
        ccam.capture()
        assert not (lost_if_cleared & ccam.succeeded)

    def test_failed_shutter_does_not_clear(self, small_events, fake_timer, celery_app):
        """An on_shutter that raises leaves the state alone; the next shot records the events."""
        events = small_events[:500]
        expected = succeeded_in(events)

        state = State()
        cam = Clearing(state, timer=fake_timer)
        feed(state, events)
        cam.fail = True
        with pytest.raises(RuntimeError, match="on_shutter failed"):
            cam.capture()
        assert state.event_count == len(events)
        assert cam.snapshots_taken == 0
        cam.fail = False
        assert cam.capture() is True
        assert cam.succeeded == expected
        assert state.event_count == 0

        celery_state = CeleryState()
        ccam = CeleryClearing(celery_state, timer=FakeTimer(), app=celery_app)
        feed(celery_state, events)
        ccam.fail = True
        with pytest.raises(RuntimeError, match="on_shutter failed"):
            ccam.capture()
        assert celery_state.event_count == 0
        ccam.fail = False
        ccam.capture()
        assert not (expected & ccam.succeeded)

    def test_failed_shutter_under_timer_keeps_going(self, state, caplog):
        """Under the real timer a failing shot is logged and the next one still runs."""
        timer = Timer()
        cam = Clearing(state, freq=0.01, timer=timer)
        cam.fail = True
        state.event({"type": "custom-event"})
        try:
            with caplog.at_level(logging.ERROR, logger="archiver.timer"):
                cam.install()
                assert wait_until(lambda: len(cam.log) >= 2)
            assert "on_shutter failed" in caplog.text
            assert state.event_count == 1
            cam.fail = False
            assert wait_until(lambda: state.event_count == 0)
        finally:
            cam.cancel()
            timer.stop()


class TestSignals:
    def test_shared_by_class_subclasses_and_instances(self, state, fake_timer):
        """The two signals live on the class: every instance and subclass shares them."""
        a, b = Polaroid(state, timer=fake_timer), Recording(state, timer=fake_timer)
        assert a.shutter_signal is b.shutter_signal is Polaroid.shutter_signal
        assert a.cleanup_signal is b.cleanup_signal is Recording.cleanup_signal
        assert Polaroid.shutter_signal.name == "shutter_signal"
        assert Polaroid.cleanup_signal.name == "cleanup_signal"
        assert "state" in Polaroid.shutter_signal.providing_args

    def test_receivers_get_keywords_only(self, state, fake_timer):
        """Receivers are called with keyword arguments only."""
        calls = []

        def receiver(*args, **kwargs):
            calls.append((args, sorted(kwargs)))

        Polaroid.shutter_signal.connect(receiver)
        try:
            Polaroid(state, timer=fake_timer).shutter()
        finally:
            Polaroid.shutter_signal.disconnect(receiver)
        assert calls == [((), ["sender", "signal", "state"])]

    def test_decorator_with_sender_filter(self, fake_timer):
        """``@Polaroid.shutter_signal.connect(sender=state)`` only hears that state's camera."""
        mine, other = State(), State()
        heard = []

        @Polaroid.shutter_signal.connect(sender=mine)
        def receiver(sender, **kwargs):
            heard.append(sender)

        try:
            Polaroid(other, timer=fake_timer).shutter()
            Recording(mine, timer=fake_timer).shutter()
        finally:
            assert Polaroid.shutter_signal.disconnect(receiver, sender=mine)
        assert heard == [mine]
        Polaroid(mine, timer=fake_timer).shutter()
        assert heard == [mine]

    def test_raising_receiver_does_not_stop_the_camera(self, state, fake_timer, caplog):
        """A receiver that raises is logged; on_shutter still runs and the shot counts."""

        def bad(**kwargs):
            raise ValueError("bad receiver")

        Polaroid.shutter_signal.connect(bad)
        cam = Recording(state, timer=fake_timer)
        try:
            with caplog.at_level(logging.ERROR, logger="archiver.signals"):
                assert cam.capture() is True
        finally:
            Polaroid.shutter_signal.disconnect(bad)
        assert len(cam.log) == 1
        assert "bad receiver" in caplog.text


class TestRealTimers:
    def test_archiver_timer(self, state):
        """With archiver's Timer the camera shoots repeatedly, and cancel flushes once more."""
        timer = Timer()
        cam = Recording(state, freq=0.02, timer=timer)
        try:
            with cam:
                assert wait_until(lambda: len(cam.log) >= 3)
                tref = cam._tref
            shots = len(cam.log)
            assert tref.cancelled
            time.sleep(0.05)
            assert len(cam.log) == shots
            assert ("on_cleanup",) not in cam.log
        finally:
            timer.stop()

    def test_celery_timer(self, state):
        """Celery's ``timer2.Timer`` works as the camera's timer."""
        timer = CeleryTimer()
        threads = []
        cam = Recording(state, freq=0.02, timer=timer)
        cam.on_shutter = lambda s: threads.append(threading.current_thread())
        try:
            cam.install()
            assert wait_until(lambda: len(threads) >= 2)
            tref, ctref = cam._tref, cam._ctref
            cam.cancel()
            assert threads[-1] is threading.current_thread()  # the flush runs in the caller
            assert threads[0] is timer
            assert tref.canceled
            assert ctref.canceled
        finally:
            timer.stop()

    def test_kombu_timer(self, state):
        """kombu's event-loop timer works as the camera's timer when driven by its owner."""
        timer = KombuTimer()
        cam = Recording(state, freq=0.01, timer=timer)
        cam.install()
        assert cam.timer is timer
        assert len(timer) == 2
        deadline = time.monotonic() + 3
        ticks = iter(timer)
        while len(cam.log) < 2 and time.monotonic() < deadline:
            delay, entry = next(ticks)
            if entry is None:
                time.sleep(min(delay or 0.001, 0.005))
            else:
                timer.apply_entry(entry)
        assert len(cam.log) >= 2
        cam.cancel()
        assert len(cam.log) >= 3
        assert all(e.canceled for _, _, e in timer._queue)
