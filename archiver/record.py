"""The archival job: events from a broker or a file -> State -> camera -> Parquet."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from .camera import ForeignCamera, Polaroid, celery_camera_problem
from .changes import Mode
from .convert import RedactMode
from .errors import ArchiverError
from .maintenance.retention import Retention
from .parquet_camera import ParquetCamera
from .ratelimit import TokenBucket
from .replay_timer import ReplayClock, ReplayTimer
from .sources import (
    LineStats,
    LiveStats,
    celery_app,
    check_broker,
    consume_live,
    is_pipe,
    open_events_file,
    read_events,
)
from .state import State, describe_event, event_problem
from .timer import Timer

logger = logging.getLogger(__name__)

#: Events between two calls of the progress callback during a replay.
PROGRESS_EVERY = 2048
#: At full speed, a stop or the end of ``duration`` is noticed within this many events.
CHECK_EVERY = 64


@dataclass
class RecordSummary:
    """What a run recorded."""

    events: int = 0
    malformed: int = 0
    rejected: int = 0
    tasks: int = 0
    snapshots: int = 0
    rows: int = 0
    files: int = 0
    bytes: int = 0
    rows_dropped: int = 0
    rows_unwritten: int = 0
    write_errors: int = 0
    last_error: str | None = None
    broker_losses: int = 0
    #: Broker messages skipped because they could not be decoded (live runs).
    bad_messages: int = 0
    #: Events the state raised on, and snapshots that failed: data may be missing.
    event_errors: int = 0
    snapshot_errors: int = 0
    seconds: float = 0.0
    archive: str = ""
    #: Values stored as null because they did not fit their column, by "table.column".
    values_nulled: dict[str, int] = field(default_factory=dict)
    early_snapshots: int = 0
    changes_dropped: int = 0
    #: Which malformed lines of a replay file were skipped ("" when none).
    malformed_report: str = ""

    @property
    def lost(self) -> int:
        """Rows or events that may be missing from the archive (the run exits 74)."""
        return (
            self.rows_dropped
            + self.rows_unwritten
            + self.event_errors
            + self.snapshot_errors
            + sum(self.values_nulled.values())
            + self.changes_dropped
        )

    def line(self) -> str:
        """One human-readable summary line."""
        extra = ""
        if self.malformed or self.rejected:
            extra += f", {self.malformed} malformed lines and {self.rejected} bad events skipped"
        if self.bad_messages:
            extra += f", {self.bad_messages} undecodable broker messages skipped"
        if self.event_errors or self.snapshot_errors:
            extra += (
                f", {self.event_errors} events failed in the state, "
                f"{self.snapshot_errors} snapshots failed"
            )
        if self.write_errors or self.rows_dropped or self.rows_unwritten:
            extra += (
                f", {self.write_errors} write errors, {self.rows_dropped} rows dropped, "
                f"{self.rows_unwritten} rows never written"
            )
        if self.broker_losses:
            extra += f", broker lost {self.broker_losses} times"
        if self.early_snapshots:
            extra += f", {self.early_snapshots} early snapshots (change log full)"
        if self.values_nulled:
            columns = ", ".join(f"{c} {n}" for c, n in sorted(self.values_nulled.items()))
            extra += f", {sum(self.values_nulled.values())} values stored as null ({columns})"
        if self.changes_dropped:
            extra += f", {self.changes_dropped} task changes dropped"
        return (
            f"Recorded {self.events:,} events into {self.archive}: {self.tasks:,} tasks, "
            f"{self.snapshots:,} snapshots, {self.rows:,} rows in {self.files:,} files "
            f"({self.bytes / 1e6:.1f} MB) in {self.seconds:.1f} s{extra}."
        )


def load_camera_class(spec: str) -> type:
    """Import ``module:Class`` or ``module.Class``, as Celery's ``symbol_by_name`` does.

    The class must be an archiver :class:`Polaroid`, a subclass of Celery's
    ``celery.events.snapshot.Polaroid``, or any class taking Celery's camera arguments
    ``(state, freq=, maxrate=, cleanup_freq=, timer=, app=)`` with ``install()`` and
    ``cancel()`` (what ``celery events --camera`` runs).
    """
    module_name, _, attr = spec.rpartition(":" if ":" in spec else ".")
    if not module_name or not attr:
        raise ArchiverError(
            f"cannot import camera {spec!r}: give it as module:Class or module.Class"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the module's own code may raise anything
        raise ArchiverError(f"cannot import camera {spec!r}: {type(exc).__name__}: {exc}") from exc
    cls = getattr(module, attr, None)
    if cls is None:
        raise ArchiverError(f"cannot import camera {spec!r}: {module_name} has no {attr!r}")
    if isinstance(cls, type) and issubclass(cls, Polaroid):
        return cls
    problem = celery_camera_problem(cls)
    if problem:
        raise ArchiverError(
            f"camera {spec!r} is not a camera: it {problem}; give an archiver.Polaroid, a "
            "celery.events.snapshot.Polaroid subclass or a class with Celery's camera constructor"
        )
    camera: type = cls  # celery_camera_problem checked that it is a class
    return camera


def _where(exc: BaseException) -> str:
    """``TypeError at state.py:612``: an error without its message (which may quote values)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return type(exc).__name__
    where = os.path.basename(tb.tb_frame.f_code.co_filename)
    return f"{type(exc).__name__} at {where}:{tb.tb_lineno}"


class Recorder:
    """Feeds events into a :class:`State` photographed by a camera.

    Args:
        archive: where the Parquet camera writes.
        camera: a camera class (default :class:`ParquetCamera`); a subclass of
            ParquetCamera gets the archive and ``camera_options``, any other Polaroid
            only the Polaroid arguments. Any other class (a camera for ``celery events
            --camera``) runs in a :class:`ForeignCamera`, on archiver's State.
        duration: stop after this many seconds (wall clock); ``limit``: after N events.
        progress: called as ``progress(recorder)`` regularly from the receiving thread.
        stop: an event that ends the run when set, as :meth:`stop` does.

    ``stop()`` (safe from a signal handler) ends a run cleanly: the camera takes a
    final snapshot and every buffered row is written before ``replay``/``live`` return.
    """

    def __init__(
        self,
        archive: str,
        *,
        freq: float = 1.0,
        maxrate: str | None = None,
        cleanup_freq: float = 3600.0,
        clear_after: bool = False,
        camera: type = ParquetCamera,
        max_tasks: int = 10_000,
        duration: float | None = None,
        limit: int | None = None,
        progress: Callable[[Recorder], Any] | None = None,
        stop: threading.Event | None = None,
        **camera_options: Any,
    ) -> None:
        if limit is not None and limit < 1:
            raise ArchiverError(f"limit must be a positive number of events, got {limit}")
        if duration is not None and not duration > 0:
            raise ArchiverError(f"duration must be positive, got {duration} s")
        if max_tasks < 1:
            raise ArchiverError(f"max_tasks must be >= 1, got {max_tasks}")
        self.archive = archive
        self.freq, self.maxrate, self.cleanup_freq = freq, maxrate, cleanup_freq
        self.clear_after = clear_after
        self.camera_cls = camera
        self.camera_options = camera_options
        self.state = State(max_tasks_in_memory=max_tasks)
        self.duration, self.limit = duration, limit
        self.progress = progress or (lambda recorder: None)
        self.camera: Polaroid | ForeignCamera | None = None
        self.lines = LineStats()
        self.live_stats = LiveStats()
        self.events = 0
        #: Events the state raised on (a bug there, or input it does not guard against).
        self.event_errors = 0
        #: Final snapshots that raised (those the timer runs are counted by the timer).
        self.snapshot_errors = 0
        #: The rule of the replay's clock (during and after :meth:`replay`).
        self.clock: ReplayClock | None = None
        self.started = time.monotonic()
        self._deadline = None if duration is None else self.started + duration
        self._stop = stop if stop is not None else threading.Event()

    # -- control ------------------------------------------------------------
    def stop(self) -> None:
        """Ask the run to finish (safe from signal handlers and other threads)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    def finished(self) -> bool:
        """Stopped, or ``duration`` is over (the ``limit`` aside)."""
        if self._stop.is_set():
            return True
        return self._deadline is not None and time.monotonic() >= self._deadline

    def should_stop(self) -> bool:
        """Stopped, ``duration`` over or ``limit`` reached."""
        if self.limit is not None and self.events >= self.limit:
            return True
        return self.finished()

    def _make_camera(self, timer: Any, clock: Callable[[], float] | None, app: Any) -> Any:
        """The camera of a run, on ``timer`` (None: its own) and ``clock`` (None: the wall's)."""
        freq, maxrate, cleanup_freq = self.freq, self.maxrate, self.cleanup_freq
        cls: Any = self.camera_cls
        native = isinstance(cls, type) and issubclass(cls, Polaroid)
        camera: Any
        try:
            if not native:  # a camera for `celery events --camera`: archiver's timer, always
                camera = ForeignCamera(
                    cls,
                    self.state,
                    freq=freq,
                    maxrate=maxrate,
                    cleanup_freq=cleanup_freq,
                    timer=Timer() if timer is None else timer,
                    app=app,
                )
            elif issubclass(cls, ParquetCamera):
                # camera_options: the ParquetCamera's own keywords, checked by it
                extra = dict(self.camera_options)
                if clock is not None:
                    extra["clock"] = clock
                camera = cls(
                    self.state,
                    self.archive,
                    freq=freq,
                    maxrate=maxrate,
                    cleanup_freq=cleanup_freq,
                    timer=timer,
                    app=app,
                    **extra,
                )
            else:
                camera = cls(
                    self.state,
                    freq=freq,
                    maxrate=maxrate,
                    cleanup_freq=cleanup_freq,
                    timer=timer,
                    app=app,
                )
        except (ValueError, TypeError) as exc:
            raise ArchiverError(f"cannot create the camera: {exc}") from exc
        except Exception as exc:  # a foreign camera's own constructor may raise anything
            if native:
                raise
            raise ArchiverError(f"cannot create the camera: {type(exc).__name__}: {exc}") from exc
        if self.clear_after:
            camera.clear_after = True
        return camera

    def _handle(self, event: dict[str, Any]) -> None:
        if self.limit is not None and self.events >= self.limit:
            return
        try:
            self.state.event(event)
        except Exception as exc:
            self._event_error(event, exc)
        self.events += 1

    def _event_error(self, event: Any, exc: Exception) -> None:
        """One event broke the state: skip it (counted) rather than end the run."""
        self.event_errors += 1
        if self.event_errors <= 5:
            logger.error(
                "Skipping an event the state could not apply (%s): %s",
                _where(exc),
                describe_event(event),
            )

    # -- runs ---------------------------------------------------------------
    def replay(
        self, events: Iterable[dict[str, Any]], *, speed: float = 0.0, drain: bool = False
    ) -> RecordSummary:
        """Replay events; snapshots are taken every ``freq`` seconds of *event* time.

        The replayed clock follows the timestamps of the events the state accepts, by
        the rule of :class:`ReplayClock` (never back, never to one outlier: a rejected
        or far-off event is still recorded, in the snapshot at the current clock).
        Snapshots carry that time, ``maxrate`` counts it, and the Parquet camera's
        buffer is written every ``flush_interval`` of it: a fast replay writes the
        snapshots and files a live run would have written.

        ``speed`` 0 replays as fast as possible, 1 keeps the gaps between events, 2
        halves them. With ``drain``, a stop (or the end of ``duration``) does not
        cut the iteration short: ``events`` is expected to end by itself soon after
        (as :func:`read_events` does on a pipe), and everything it still yields is
        recorded without waiting. ``limit`` always applies.
        """
        if not speed >= 0:
            raise ArchiverError(f"speed must be >= 0, got {speed}")
        run = _ReplayRun(self, speed=speed, drain=drain)
        self.clock = run.clock
        self.camera = camera = run.install_camera()
        try:
            run.feed(events)
        finally:
            run.finish()
            self._close(camera)
        return self.summary()

    def _apply(self, event: dict[str, Any]) -> None:
        """Apply one event to the state; an exception is counted and the event skipped."""
        try:
            self.state.event(event)
        except Exception as exc:
            self._event_error(event, exc)

    def replay_file(self, path: str, *, speed: float = 0.0) -> RecordSummary:
        """Replay a JSON-lines file (``-`` = stdin, gzip detected) into the archive.

        A stop ends a file's replay at once; from a pipe (stdin), every event already
        written to it is still recorded.
        """
        with contextlib.ExitStack() as stack:
            stream = open_events_file(path)
            if path != "-":
                stack.callback(stream.close)
            events = read_events(stream, self.lines, should_stop=self.finished)
            return self.replay(events, speed=speed, drain=is_pipe(stream))

    def _sleep_until(self, deadline: float) -> None:
        while not self.finished():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(left, 0.5))
            self.progress(self)

    def live(self, app: Any) -> RecordSummary:
        """Record from the app's broker until stopped, ``duration`` or ``limit``.

        Raises :class:`BrokerUnavailable` if the broker cannot be reached at start; a
        broker lost later is retried with backoff while the state is kept.
        """
        check_broker(app)
        self.camera = camera = self._make_camera(None, None, app)
        camera.install()
        try:
            consume_live(
                app,
                self._handle,
                should_stop=self.should_stop,
                on_idle=lambda: self.progress(self),
                stats=self.live_stats,
            )
        finally:
            # Stop the timer first (it waits for a capture in progress), so that no
            # capture can land after the final one and its flush.
            stop_timer = getattr(camera.timer, "stop", None)
            try:
                if stop_timer is not None:
                    stop_timer()
            finally:
                self._close(camera)
        return self.summary()

    def _close(self, camera: Any) -> None:
        """The final snapshot and flush; a failure is counted (exit 74), not raised."""
        try:
            camera.cancel()
        except Exception as exc:
            self.snapshot_errors += 1
            logger.error("The final snapshot failed (%s): %s", type(exc).__name__, exc)

    def summary(self) -> RecordSummary:
        camera = self.camera
        sink = getattr(camera, "sink", None)
        stats = sink.stats if sink is not None else None
        return RecordSummary(
            events=self.events,
            malformed=self.lines.malformed,
            rejected=self.state.rejected_events,
            tasks=self.state.tasks_created,
            snapshots=getattr(camera, "snapshots_taken", 0),
            rows=stats.rows_written if stats else 0,
            files=stats.files_written if stats else 0,
            bytes=stats.bytes_written if stats else 0,
            rows_dropped=stats.rows_dropped if stats else 0,
            rows_unwritten=sink.buffered_rows if sink is not None else 0,
            write_errors=stats.write_errors if stats else 0,
            last_error=stats.last_error if stats else None,
            broker_losses=self.live_stats.losses,
            bad_messages=self.live_stats.bad_messages,
            event_errors=self.event_errors,
            snapshot_errors=getattr(getattr(camera, "timer", None), "errors", 0)
            + self.snapshot_errors,
            values_nulled=dict(getattr(getattr(camera, "converter", None), "values_nulled", {})),
            early_snapshots=getattr(camera, "early_snapshots", 0),
            changes_dropped=self.state.changes_dropped,
            seconds=time.monotonic() - self.started,
            archive=str(getattr(camera, "archive", None) or self.archive),
        )


class _ReplayRun:
    """One :meth:`Recorder.replay`: its replayed clock and timer, and the loop over events."""

    def __init__(self, recorder: Recorder, *, speed: float, drain: bool) -> None:
        self.recorder = recorder
        self.speed, self.drain = speed, drain
        self.timer = ReplayTimer()
        self.clock = ReplayClock()
        self.count = recorder.events  # events taken from the iteration so far
        # Stop, duration and progress are checked every CHECK_EVERY events at full
        # speed (cheap), before every event when sleeping between them.
        self.check_every = 1 if speed > 0 else CHECK_EVERY
        self.next_check = self.count
        self.tick = self.count + PROGRESS_EVERY  # the next progress call
        self.stopped = False  # a stop seen while draining
        self.due = -math.inf  # when the timer next has something to run
        self.wall_start = time.monotonic()
        self._stamped = -math.inf  # the latest snapshot time taken from the events

    # -- clocks -------------------------------------------------------------
    def replayed(self) -> float:
        """A timer beat's time while it runs (snapshots at their own beat), else the
        replay clock (e.g. for an early snapshot: the state is full of changes); the
        wall clock before any event time."""
        now, latest = self.timer.now, self.clock.estimate()
        if latest is None:
            return time.time() if now is None else now
        return now if now is not None and (self.timer.running or now > latest) else latest

    def snapshot_time(self) -> float:
        """The snapshot time: :meth:`replayed`, never before an earlier snapshot's."""
        if self.timer.now is None and self.clock.estimate() is None:
            return time.time()
        self._stamped = max(self.replayed(), self._stamped + 1e-6)  # a later one sorts later
        return self._stamped

    def install_camera(self) -> Any:
        """The recorder's camera on the replayed clock: snapshots, maxrate and flushes."""
        timer = self.timer
        camera = self.recorder._make_camera(timer, self.snapshot_time, None)
        if getattr(camera.maxrate, "fill_rate", None) is not None:
            camera.maxrate = TokenBucket(
                camera.maxrate.fill_rate,
                camera.maxrate.capacity,
                clock=lambda: timer.now or 0.0,
            )
        sink = getattr(camera, "sink", None)
        if sink is not None and hasattr(sink, "clock"):
            # Buffered rows are written every ``flush_interval`` of event time too: the
            # files a live run would have written, and memory bounded the same way.
            sink.clock = self.replayed
        camera.install()
        return camera

    # -- the loop -----------------------------------------------------------
    def feed(self, events: Iterable[dict[str, Any]]) -> None:
        """Apply the events to the state, moving the replayed clock (the hot path).

        Most events take the fast path: at most a small step of the clock, no timer
        entry due, no jump pending; the rest go through :meth:`move_clock`.
        """
        recorder = self.recorder
        state, clock = recorder.state, self.clock
        state_event, seen, step = state.event, clock.seen, clock.step
        apply, event_error, move_clock = recorder._apply, recorder._event_error, self.move_clock
        fast = self.speed == 0  # the fast path is off while sleeping between events
        now = hi = -math.inf  # the clock, and the furthest it may move without a check
        due = self.due
        count, next_check = self.count, self.next_check
        self.wall_start = time.monotonic()
        try:
            for event in events:
                if count >= next_check:
                    if self.checkpoint(count):
                        break
                    next_check = self.next_check
                count += 1
                ts = event.get("timestamp")
                if type(ts) is not float and type(ts) is not int:
                    apply(event)
                elif fast and (ts <= now or (ts < due and ts <= hi)):
                    # The clock moves once the state has accepted the event.
                    rejected = state.rejected_events
                    try:
                        state_event(event)
                    except Exception as exc:
                        event_error(event, exc)
                        continue
                    if state.rejected_events == rejected:
                        seen(ts)
                        if ts > now:
                            now = clock.now = ts
                            hi = ts + step
                else:
                    moved = move_clock(event, ts, count)
                    if moved is not None:
                        now, hi, due = moved, moved + step, self.due
                    apply(event)
        finally:
            self.count = count

    def checkpoint(self, count: int) -> bool:
        """Every few events: whether to end the iteration (limit, stop, duration), and
        the progress callback now and then."""
        recorder, limit = self.recorder, self.recorder.limit
        if limit is not None and count >= limit:
            return True
        self.next_check = count + self.check_every
        if limit is not None and self.next_check > limit:
            self.next_check = limit
        if not self.stopped and recorder.finished():
            if not self.drain:
                return True
            self.stopped = True
        if count >= self.tick:
            self.tick = count + PROGRESS_EVERY
            recorder.events = count
            recorder.progress(recorder)
        return False

    def move_clock(self, event: dict[str, Any], ts: float, count: int) -> float | None:
        """Offer a good event's time to the clock, which may start, jump or run the
        timer; sleeps first at a real-time speed. The new clock, or None if it stayed."""
        clock = self.clock
        moved = clock.offer(ts) if event_problem(event) is None else None
        if moved is None:
            return None
        start = clock.start
        assert start is not None  # set when the clock first moves
        if self.speed > 0 and not self.stopped:
            self.recorder.events = count - 1
            self.recorder._sleep_until(self.wall_start + (moved - start) / self.speed)
        if moved >= self.due:
            if self.timer.now is None:  # the timer starts with the confirmed run
                self.timer.advance(start)
            self.timer.advance(moved)
            self.due = self.timer.next_due
        return moved

    def finish(self) -> None:
        """Count the events and run the timer to the clock's end: the final snapshot is
        taken at the replayed time."""
        self.recorder.events = self.count
        end, start = self.clock.finish(), self.clock.start
        if end is not None and start is not None:
            if self.timer.now is None:
                self.timer.advance(start)
            self.timer.advance(end)


def record_events(
    archive: str,
    *,
    replay: str | None = None,
    speed: float = 0.0,
    broker: str | None = None,
    app: str | None = None,
    camera: str | type | None = None,
    freq: float = 1.0,
    maxrate: str | None = None,
    cleanup_freq: float = 3600.0,
    clear_after: bool = False,
    mode: Mode = "changes",
    redact: str | Iterable[str] = (),
    redact_mode: RedactMode = "null",
    redact_key: bytes | str | None = None,
    max_tasks: int = 10_000,
    flush_interval: float = 60.0,
    retention: str | Retention | None = None,
    duration: float | None = None,
    limit: int | None = None,
    progress: Callable[[Recorder], Any] | None = None,
    stop: threading.Event | None = None,
) -> RecordSummary:
    """Record into ``archive`` from a replay file (``replay``) or a live broker
    (``broker`` URL and/or Celery ``app`` "module:app"); what ``archiver record`` runs.

    ``camera`` is a camera class or its "module:Class" name (see
    :func:`load_camera_class`); ``retention`` a :class:`Retention` or its file.
    Setting ``stop`` ends the run cleanly (final snapshot, every row written). The
    summary's ``malformed_report`` says which lines of a replay file were skipped.
    """
    if (replay is None) == (broker is None and app is None):
        raise ArchiverError("give exactly one source: a replay file, or a broker or app")
    camera_cls = load_camera_class(camera) if isinstance(camera, str) else camera
    if isinstance(retention, str):
        retention = Retention.from_file(retention)
    recorder = Recorder(
        archive,
        freq=freq,
        maxrate=maxrate,
        cleanup_freq=cleanup_freq,
        clear_after=clear_after,
        camera=camera_cls or ParquetCamera,
        max_tasks=max_tasks,
        duration=duration,
        limit=limit,
        progress=progress,
        stop=stop,
        mode=mode,
        redact=redact,
        redact_mode=redact_mode,
        redact_key=redact_key,
        flush_interval=flush_interval,
        retention=retention,
    )
    if replay is not None:
        summary = recorder.replay_file(replay, speed=speed)
    else:
        summary = recorder.live(celery_app(broker, app))
    summary.malformed_report = recorder.lines.report()
    return summary


@dataclass
class TapSummary:
    """What a tap wrote."""

    events: int = 0
    #: Times the broker was lost (and reconnected to, or not).
    broker_losses: int = 0
    #: Broker messages skipped because they could not be decoded.
    bad_messages: int = 0


def tap_events(
    out: str | IO[str],
    *,
    broker: str | None = None,
    app: str | None = None,
    duration: float | None = None,
    limit: int | None = None,
    stop: threading.Event | None = None,
) -> TapSummary:
    """Write the raw events of a live broker to ``out`` (a path, ``-`` for stdout, or a
    text stream) as JSON lines, until ``stop`` is set, ``duration`` seconds or ``limit``.

    The broker is checked before ``out`` is opened (an unreachable broker raises
    :class:`BrokerUnavailable` and creates no file). The file is flushed every second
    while events arrive, so that ``tail -f`` sees them and a kill loses at most 1 s.
    """
    if limit is not None and limit < 1:
        raise ArchiverError(f"limit must be a positive number of events, got {limit}")
    if duration is not None and not duration > 0:
        raise ArchiverError(f"duration must be positive, got {duration} s")
    celery = celery_app(broker, app)
    check_broker(celery)
    with _open_tap(out) as stream:
        return _Tap(stream, duration=duration, limit=limit, stop=stop).run(celery)


@contextlib.contextmanager
def _open_tap(out: str | IO[str]) -> Iterator[IO[str]]:
    """``out`` as a text stream: a path opened for writing, ``-`` as stdout; flushed at
    the end, and closed if opened here."""
    if not isinstance(out, str):
        stream = out
    elif out == "-":
        stream = sys.stdout
    else:
        try:
            stream = open(out, "w", encoding="utf-8")  # noqa: SIM115  (closed below)
        except OSError as exc:
            raise ArchiverError(f"cannot write {out}: {exc.strerror or exc}") from exc
    try:
        yield stream
    finally:
        stream.flush()
        if isinstance(out, str) and out != "-":
            stream.close()


class _Tap:
    """The loop of :func:`tap_events`: one JSON line per event, flushed every second."""

    def __init__(
        self,
        stream: IO[str],
        *,
        duration: float | None,
        limit: int | None,
        stop: threading.Event | None,
    ) -> None:
        self.stream = stream
        self.limit = limit
        self.stop = stop or threading.Event()
        self.started = self.last_flush = time.monotonic()
        self.deadline = None if duration is None else self.started + duration
        self.count = 0

    def should_stop(self) -> bool:
        """Stopped, ``limit`` events written or ``duration`` over."""
        return (
            self.stop.is_set()
            or (self.limit is not None and self.count >= self.limit)
            or (self.deadline is not None and time.monotonic() >= self.deadline)
        )

    def write(self, event: dict[str, Any]) -> None:
        """One event as one JSON line (values JSON cannot hold as their text)."""
        if self.limit is not None and self.count >= self.limit:
            return
        self.stream.write(json.dumps(event, default=str, ensure_ascii=False) + "\n")
        self.count += 1

    def flush_now_and_then(self) -> None:
        """Flush once a second at most."""
        now = time.monotonic()
        if now - self.last_flush >= 1.0:
            self.last_flush = now
            self.stream.flush()

    def run(self, app: Any) -> TapSummary:
        """Consume the broker's events until :meth:`should_stop`."""
        stats = LiveStats()
        consume_live(
            app,
            self.write,
            should_stop=self.should_stop,
            on_idle=self.flush_now_and_then,
            stats=stats,
        )
        return TapSummary(self.count, stats.losses, stats.bad_messages)
