"""The archival job: events from a broker or a file -> State -> camera -> Parquet."""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .camera import Polaroid
from .errors import ArchiverError
from .parquet_camera import ParquetCamera
from .replay import ReplayTimer
from .sources import LineStats, check_broker, consume_live
from .state import State

logger = logging.getLogger(__name__)


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
    write_errors: int = 0
    seconds: float = 0.0
    archive: str = ""

    def line(self) -> str:
        """One human-readable summary line."""
        extra = ""
        if self.malformed or self.rejected:
            extra += f", {self.malformed} malformed lines and {self.rejected} bad events skipped"
        if self.write_errors or self.rows_dropped:
            extra += f", {self.write_errors} write errors, {self.rows_dropped} rows dropped"
        return (
            f"Recorded {self.events:,} events into {self.archive}: {self.tasks:,} tasks, "
            f"{self.snapshots:,} snapshots, {self.rows:,} rows in {self.files:,} files "
            f"({self.bytes / 1e6:.1f} MB) in {self.seconds:.1f} s{extra}."
        )


def load_camera_class(spec: str) -> type[Polaroid]:
    """Import ``module:Class`` (or ``module.Class``); it must be a Polaroid subclass."""
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ArchiverError(f"cannot import camera {spec!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Polaroid)):
        raise ArchiverError(f"camera {spec!r} is not a subclass of archiver.Polaroid")
    return cls


class Recorder:
    """Feeds events into a :class:`State` photographed by a camera.

    Args:
        archive: where the Parquet camera writes.
        camera: a Polaroid subclass (default :class:`ParquetCamera`); a subclass of
            ParquetCamera gets the archive and ``camera_options``, any other Polaroid
            only the Polaroid arguments (as Celery's ``--camera``).
        duration: stop after this many seconds (wall clock); ``limit``: after N events.
        progress: called as ``progress(recorder)`` regularly from the receiving thread.
    """

    def __init__(
        self,
        archive: str,
        *,
        freq: float = 1.0,
        maxrate: str | None = None,
        cleanup_freq: float = 3600.0,
        clear_after: bool = False,
        camera: type[Polaroid] = ParquetCamera,
        max_tasks: int = 10_000,
        duration: float | None = None,
        limit: int | None = None,
        progress: Callable[[Recorder], Any] | None = None,
        **camera_options: Any,
    ) -> None:
        if limit is not None and limit < 1:
            raise ArchiverError(f"--limit must be a positive number of events, got {limit}")
        if duration is not None and duration <= 0:
            raise ArchiverError(f"--duration must be positive, got {duration} s")
        self.archive = archive
        self.freq, self.maxrate, self.cleanup_freq = freq, maxrate, cleanup_freq
        self.clear_after = clear_after
        self.camera_cls = camera
        self.camera_options = camera_options
        self.state = State(max_tasks_in_memory=max_tasks)
        self.duration, self.limit = duration, limit
        self.progress = progress or (lambda recorder: None)
        self.camera: Polaroid | None = None
        self.lines = LineStats()
        self.events = 0
        self.started = time.monotonic()
        self._stop = threading.Event()

    # -- control ------------------------------------------------------------
    def stop(self) -> None:
        """Ask the run to finish (safe from signal handlers and other threads)."""
        self._stop.set()

    def should_stop(self) -> bool:
        if self._stop.is_set():
            return True
        if self.limit is not None and self.events >= self.limit:
            return True
        return self.duration is not None and time.monotonic() - self.started >= self.duration

    def _make_camera(self, timer: Any, clock: Callable[[], float] | None, app: Any) -> Polaroid:
        args = {"freq": self.freq, "maxrate": self.maxrate, "cleanup_freq": self.cleanup_freq}
        try:
            if issubclass(self.camera_cls, ParquetCamera):
                extra = dict(self.camera_options)
                if clock is not None:
                    extra["clock"] = clock
                camera = self.camera_cls(
                    self.state, self.archive, timer=timer, app=app, **args, **extra
                )
            else:
                camera = self.camera_cls(self.state, timer=timer, app=app, **args)
        except ValueError as exc:
            raise ArchiverError(str(exc)) from exc
        if self.clear_after:
            camera.clear_after = True
        return camera

    def _handle(self, event: dict[str, Any]) -> None:
        if self.limit is not None and self.events >= self.limit:
            return
        self.state.event(event)
        self.events += 1

    # -- runs ---------------------------------------------------------------
    def replay(self, events: Iterable[dict[str, Any]], *, speed: float = 0.0) -> RecordSummary:
        """Replay events; snapshots are taken every ``freq`` seconds of *event* time."""
        if speed < 0:
            raise ArchiverError(f"--speed must be >= 0, got {speed}")
        timer = ReplayTimer()
        self.camera = camera = self._make_camera(timer, lambda: timer.now, None)
        camera.install()
        last_ts: float | None = None
        wall_start = time.monotonic()
        first_ts: float | None = None
        tick = 0
        try:
            for event in events:
                if self.should_stop():
                    break
                ts = event.get("timestamp")
                if isinstance(ts, (int, float)) and not isinstance(ts, bool):
                    if first_ts is None:
                        first_ts = ts
                    if speed > 0:
                        self._sleep_until(wall_start + (ts - first_ts) / speed)
                    if last_ts is None or ts > last_ts:
                        timer.advance(ts)
                        last_ts = ts
                self._handle(event)
                tick += 1
                if tick >= 2000:
                    tick = 0
                    self.progress(self)
        finally:
            camera.cancel()
        return self.summary()

    def _sleep_until(self, deadline: float) -> None:
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(left, 0.5))
            self.progress(self)

    def live(self, app: Any) -> RecordSummary:
        """Record from the app's broker until stopped, ``duration`` or ``limit``."""
        check_broker(app)
        self.camera = camera = self._make_camera(None, None, app)
        camera.install()
        try:
            consume_live(
                app, self._handle, should_stop=self.should_stop, on_idle=lambda: self.progress(self)
            )
        finally:
            camera.cancel()
            stop_timer = getattr(camera.timer, "stop", None)
            if stop_timer is not None:
                stop_timer()
        return self.summary()

    def summary(self) -> RecordSummary:
        camera = self.camera
        sink = getattr(camera, "sink", None)
        stats = sink.stats if sink is not None else None
        return RecordSummary(
            events=self.events,
            malformed=self.lines.malformed,
            rejected=self.state.rejected_events,
            tasks=len(self.state.tasks),
            snapshots=getattr(camera, "snapshots_taken", 0),
            rows=stats.rows_written if stats else 0,
            files=stats.files_written if stats else 0,
            bytes=stats.bytes_written if stats else 0,
            rows_dropped=stats.rows_dropped if stats else 0,
            write_errors=stats.write_errors if stats else 0,
            seconds=time.monotonic() - self.started,
            archive=str(self.archive),
        )
