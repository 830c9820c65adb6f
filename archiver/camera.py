"""Polaroid: takes periodic snapshots of a state, with the public shape of Celery's camera."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any, Protocol

from .ratelimit import TokenBucket, parse_rate
from .signals import Signal
from .timer import Timer

logger = logging.getLogger("archiver.camera")


class SnapshotState(Protocol):
    """What a camera asks of a state: ``archiver.State`` and Celery's ``State`` both fit.

    ``freeze_while(fun, *args, clear_after=…)`` runs ``fun`` with event intake blocked,
    ``clear()`` forgets what was photographed. A state may also have ``_clear`` (clear
    under the lock already held) and ``on_changes_full``; the camera looks those up
    with ``getattr``, as it does ``freeze_while`` for a state without one.
    """

    def freeze_while(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any: ...

    def clear(self, ready: bool = True) -> None: ...


class TimerEntry(Protocol):
    """A repeating call scheduled by a :class:`CameraTimer`."""

    def cancel(self) -> None: ...


class CameraTimer(Protocol):
    """What a camera asks of a timer: archiver's ``Timer``/``ReplayTimer``, kombu's ``Timer``."""

    def call_repeatedly(
        self, secs: float, fun: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> TimerEntry: ...


def _positive(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number > 0:
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    return number


class Polaroid:
    """Record snapshots of ``state`` every ``freq`` seconds.

    Subclasses override :meth:`on_shutter` (given the frozen state) and
    :meth:`on_cleanup` (run every ``cleanup_freq`` seconds).

    Differences from Celery's ``Polaroid``, both to avoid losing events:

    * With ``clear_after``, the state is cleared only when a snapshot was really
      taken: not when ``maxrate`` skipped the shot, and not when ``on_shutter``
      raised. Celery clears in both cases and those events are never recorded. (A
      state with ``freeze_while`` but no ``_clear`` is cleared when the shot was not
      skipped; its ``freeze_while`` decides what happens when ``on_shutter`` raises.)
    * :meth:`cancel` always takes the final snapshot (bypassing ``maxrate``),
      where Celery skips it if the last capture was less than ``freq`` ago.
    """

    #: A subclass may set a class-wide timer; otherwise ``__init__`` makes one.
    timer: CameraTimer = None  # type: ignore[assignment]
    shutter_signal = Signal(name="shutter_signal", providing_args={"state"})
    cleanup_signal = Signal(name="cleanup_signal")
    clear_after = False

    _tref: TimerEntry | None = None
    _ctref: TimerEntry | None = None
    #: True while the final snapshot is taken: ``maxrate`` does not apply to it.
    _forced = False

    def __init__(
        self,
        state: SnapshotState,
        freq: float = 1.0,
        maxrate: str | float | None = None,
        cleanup_freq: float = 3600.0,
        timer: CameraTimer | None = None,
        app: Any = None,  # a Celery app, unused: Celery's camera takes it
    ) -> None:
        self.app = app
        self.state = state
        self.freq = _positive("freq", freq)
        self.cleanup_freq = _positive("cleanup_freq", cleanup_freq)
        # ``is None`` checks: an empty timer may be falsy (kombu's Timer and ours define
        # __len__), and a given timer must never be swapped for a new one.
        if timer is None:
            timer = self.timer if self.timer is not None else Timer()
        self.timer = timer
        self.logger = logger
        self.maxrate = None if maxrate is None else TokenBucket(parse_rate(maxrate), capacity=1)
        self.snapshots_taken = 0
        self.snapshots_skipped = 0

    def install(self) -> None:
        """Schedule :meth:`capture` every ``freq`` and :meth:`cleanup` every ``cleanup_freq`` s."""
        if self._tref is not None:
            return
        self._tref = self.timer.call_repeatedly(self.freq, self.capture)
        self._ctref = self.timer.call_repeatedly(self.cleanup_freq, self.cleanup)

    def on_shutter(self, state: SnapshotState) -> None:
        """Hook: handle a frozen snapshot of ``state``."""

    def on_cleanup(self) -> None:
        """Hook: periodic maintenance."""

    def cleanup(self) -> None:
        """Send ``cleanup_signal``, then run :meth:`on_cleanup`."""
        self.logger.debug("Cleanup: Running...")
        self.cleanup_signal.send(sender=self.state)
        self.on_cleanup()

    def shutter(self, *, force: bool = False) -> bool:
        """Send ``shutter_signal`` and run :meth:`on_shutter` if the rate limit allows.

        Returns True when the snapshot was taken. ``force`` (or a final snapshot being
        taken by :meth:`cancel`) bypasses ``maxrate``.
        """
        if not (force or self._forced) and not self._rate_allows():
            return False
        self.logger.debug("Shutter: %s", self.state)
        self.shutter_signal.send(sender=self.state, state=self.state)
        self.on_shutter(self.state)
        self.snapshots_taken += 1
        return True

    def _rate_allows(self) -> bool:
        if self.maxrate is None or self.maxrate.can_consume():
            return True
        self.snapshots_skipped += 1
        return False

    def capture(self, *, force: bool = False) -> bool:
        """Freeze the state and take a snapshot; clear it afterwards if ``clear_after``.

        The state is only asked for ``freeze_while(fun, clear_after=…)``, as Celery's
        camera does; a state without ``freeze_while`` is shuttered directly.
        """
        forced, self._forced = self._forced, self._forced or force
        try:
            return self._capture()
        finally:
            self._forced = forced

    def _capture(self) -> bool:
        state = self.state
        freeze = getattr(state, "freeze_while", None)
        if not self.clear_after:
            return bool(freeze(self.shutter, clear_after=False) if freeze else self.shutter())
        if freeze is None:
            taken = self.shutter()
            if taken:
                state.clear()
            return taken
        clear_locked = getattr(state, "_clear", None)
        if clear_locked is not None:  # clear under the same lock, after a shot
            return bool(freeze(self._shutter_then, clear_locked, clear_after=False))
        # Only freeze_while: decide on the rate first, so a skipped shot does not clear.
        if not (self._forced or self._rate_allows()):
            return False
        forced, self._forced = self._forced, True
        try:
            return bool(freeze(self.shutter, clear_after=True))
        finally:
            self._forced = forced

    def _shutter_then(self, clear: Callable[[], object]) -> bool:
        taken = self.shutter()
        if taken:
            clear()
        return taken

    def cancel(self) -> None:
        """Take a final snapshot (the flush), then cancel both timer entries.

        Harmless when called twice or before :meth:`install`.
        """
        tref, ctref = self._tref, self._ctref
        self._tref = self._ctref = None
        try:
            if tref is not None:
                self.capture(force=True)  # the state is not told: it reaches the shutter
        finally:
            if tref is not None:
                tref.cancel()
            if ctref is not None:
                ctref.cancel()

    def __enter__(self) -> Polaroid:
        self.install()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()


class ForeignCamera:
    """Runs a camera written for ``celery events --camera`` (a subclass of Celery's
    ``Polaroid``, or any class taking Celery's camera arguments) under archiver's recorder.

    The camera is built as Celery builds it, ``cls(state, freq=, maxrate=, cleanup_freq=,
    timer=, app=)`` (``cleanup_freq`` only if it takes it), and keeps the given ``timer``
    even when that is empty and so falsy (Celery's ``timer or Timer()`` would replace it).
    Its snapshots are counted, and :meth:`cancel` takes its final snapshot past ``maxrate``
    as archiver's cameras do.
    """

    def __init__(
        self,
        cls: Callable[..., Any],
        state: SnapshotState,
        *,
        freq: float,
        maxrate: str | float | None,
        cleanup_freq: float,
        timer: CameraTimer,
        app: Any,
    ) -> None:
        if accepts_argument(cls, "cleanup_freq"):
            camera = cls(
                state, freq=freq, maxrate=maxrate, cleanup_freq=cleanup_freq, timer=timer, app=app
            )
        else:
            camera = cls(state, freq=freq, maxrate=maxrate, timer=timer, app=app)
        #: The foreign camera: an object of a class archiver does not know.
        self.camera: Any = camera
        if getattr(camera, "timer", None) is not timer:
            camera.timer = timer
        self.snapshots_taken = 0
        on_shutter = getattr(camera, "on_shutter", None)
        if callable(on_shutter):

            def counted(state: SnapshotState) -> Any:
                result = on_shutter(state)
                self.snapshots_taken += 1
                return result

            camera.on_shutter = counted

    @property
    def timer(self) -> CameraTimer:
        timer: CameraTimer = self.camera.timer
        return timer

    @property
    def maxrate(self) -> Any:
        return getattr(self.camera, "maxrate", None)

    @maxrate.setter
    def maxrate(self, value: Any) -> None:
        self.camera.maxrate = value

    @property
    def clear_after(self) -> bool:
        return bool(getattr(self.camera, "clear_after", False))

    @clear_after.setter
    def clear_after(self, value: bool) -> None:
        self.camera.clear_after = value

    def install(self) -> None:
        self.camera.install()

    def cancel(self) -> None:
        """The camera's own cancel (Celery's takes a final snapshot), with no ``maxrate``."""
        maxrate = self.maxrate
        if maxrate is not None:
            self.camera.maxrate = None
        try:
            self.camera.cancel()
        finally:
            if maxrate is not None:
                self.camera.maxrate = maxrate


def accepts_argument(cls: Any, name: str) -> bool:
    """Whether calling ``cls`` accepts the keyword ``name`` (True if it cannot be told)."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def celery_camera_problem(cls: Any) -> str | None:
    """Why ``cls`` cannot run as a ``celery events --camera`` camera, or None."""
    if not callable(cls):
        return "is not a class"
    missing = [m for m in ("install", "cancel") if not callable(getattr(cls, m, None))]
    if missing:
        return f"has no {' or '.join(m + '()' for m in missing)} method"
    try:
        inspect.signature(cls).bind(None, freq=1.0, maxrate=None, timer=None, app=None)
    except TypeError as exc:
        return f"does not take Celery's camera arguments (state, freq, maxrate, timer, app): {exc}"
    except ValueError:  # no signature to check (a builtin): let the call tell
        pass
    return None
