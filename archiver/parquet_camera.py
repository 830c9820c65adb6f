"""ParquetCamera: a Polaroid whose shutter archives each snapshot as Parquet."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs

from .camera import CameraTimer, Polaroid, SnapshotState
from .changes import Mode
from .convert import STAGE_ROWS, CeleryConverter, Converter, RedactMode
from .errors import LockedError, NoArchiveError
from .maintenance.recovery import repair
from .sink import ROW_GROUP_SIZE, ParquetSink, new_writer_id
from .storage import resolve

if TYPE_CHECKING:  # importing the maintenance package waits for the first cleanup
    from .maintenance.retention import Retention

logger = logging.getLogger("archiver.camera")


def _configured_converter(
    converter: Converter | None,
    *,
    mode: Mode,
    redact: Iterable[str],
    redact_mode: RedactMode,
    redact_key: bytes | str | None,
    stage_rows: int,
) -> Converter:
    """``converter``, or the default one with these settings (``redact`` may be a
    comma-separated string); the settings are refused with a custom converter."""
    if isinstance(redact, str):
        redact = [r.strip() for r in redact.split(",") if r.strip()]
    if converter is None:
        return CeleryConverter(
            mode=mode,
            redact=redact,
            redact_mode=redact_mode,
            redact_key=redact_key,
            stage_rows=stage_rows,
        )
    if mode != "changes" or tuple(redact) or redact_mode != "null" or redact_key:
        raise ValueError(
            "mode, redact, redact_mode and redact_key configure the default converter: "
            "pass them to your converter instead"
        )
    return converter


class ParquetCamera(Polaroid):
    """Batch frozen states into Arrow tables and flush them as partitioned Parquet.

    Works with ``archiver.State`` and, unchanged, with ``celery.events.state.State``.
    The shutter (under the state's lock) only converts the frozen state into Arrow
    batches and buffers them; files are written by :meth:`capture` after the lock
    is released, when the buffer is due, and by :meth:`cancel`.

    Args:
        archive: a local path or a URI (``file://``, ``s3://``, ``gs://``, ``memory://``).
        converter: turns a frozen state into record batches (default: Celery's
            tasks / workers / snapshots, see :class:`archiver.convert.CeleryConverter`).
        mode, redact, redact_mode, redact_key: passed to the default converter
            (``redact`` may be a comma-separated string); an error with a custom
            ``converter``. ``redact_mode="hash"`` needs ``redact_key``, and Celery
            copies argument values into ``exception`` and ``traceback``.
        flush_rows, flush_interval, max_buffer_rows: when to write, and how many
            rows to keep in memory while writes fail.
        compression, row_group_size: Parquet settings of every file.
        filesystem: a pyarrow or fsspec filesystem (then ``archive`` is a path on it).
        storage_options: options of the fsspec filesystem (e.g. s3fs's ``key``,
            ``secret``, ``client_kwargs={"endpoint_url": ...}``), instead of ``filesystem``.
        clock: returns the snapshot time (epoch seconds); replays pass their own.
        retention: a :class:`archiver.maintenance.Retention` applied by ``on_cleanup``.

    With ``archiver.State``, the camera takes an early snapshot (bypassing ``maxrate``,
    counted in :attr:`early_snapshots`) as soon as the state holds ``max_tasks_in_memory``
    changed tasks, so that no change is dropped and memory stays bounded.
    """

    def __init__(
        self,
        state: SnapshotState,
        archive: str | os.PathLike[str],
        freq: float = 1.0,
        maxrate: str | float | None = None,
        cleanup_freq: float = 3600.0,
        timer: CameraTimer | None = None,
        app: Any = None,
        *,
        converter: Converter | None = None,
        mode: Mode = "changes",
        redact: Iterable[str] = (),
        redact_mode: RedactMode = "null",
        redact_key: bytes | str | None = None,
        flush_rows: int = 100_000,
        flush_interval: float = 60.0,
        max_buffer_rows: int = 1_000_000,
        compression: str = "zstd",
        row_group_size: int = ROW_GROUP_SIZE,
        filesystem: pafs.FileSystem | Any = None,
        storage_options: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        retention: Retention | None = None,
    ) -> None:
        super().__init__(state, freq, maxrate, cleanup_freq, timer, app)
        self.converter = _configured_converter(
            converter,
            mode=mode,
            redact=redact,
            redact_mode=redact_mode,
            redact_key=redact_key,
            stage_rows=min(STAGE_ROWS, flush_rows),
        )
        self.location = resolve(archive, filesystem, storage_options)
        self.archive = self.location.uri
        self.camera_id = new_writer_id()
        self.sink = ParquetSink(
            self.location,
            self.converter.schemas,
            compression=compression,
            row_group_size=row_group_size,
            flush_rows=flush_rows,
            flush_interval=flush_interval,
            max_buffer_rows=max_buffer_rows,
            writer_id=self.camera_id,
        )
        repair(self.location)  # a commit a crashed cleanup left half-done (one listing)
        self.clock = clock
        self.retention = retention
        self._snapshot_seq = 0
        #: Snapshots taken before their time because the state's change log was full.
        self.early_snapshots = 0
        if hasattr(state, "on_changes_full"):
            state.on_changes_full = self._early_snapshot

    def _early_snapshot(self) -> None:
        """The state holds as many changes as it may: write them now (called by the state)."""
        self.early_snapshots += 1
        self.capture(force=True)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.archive!r} every {self.freq:g}s>"

    def on_shutter(self, state: SnapshotState) -> None:
        """Convert the frozen state and buffer its rows (no I/O under the state lock)."""
        self._snapshot_seq += 1
        snapshot_id = f"{self.camera_id}-{self._snapshot_seq:08d}"
        batches = self.converter.convert(state, captured_at=self.clock(), snapshot_id=snapshot_id)
        for table, batch in batches.items():
            self.sink.append(table, batch)

    def capture(self, *, force: bool = False) -> bool:
        """Take a snapshot, then write the buffer if it is due (outside the state lock)."""
        taken = super().capture(force=force)
        if self.sink.due():
            self.flush()
        return taken

    def _drain(self) -> None:
        """Move rows the converter staged (if it stages) into the write buffer."""
        drain = getattr(self.converter, "drain", None)
        if drain is not None:
            for table, batch in drain().items():
                self.sink.append(table, batch)

    def flush(self) -> list[str]:
        """Write every buffered row now; returns the paths written."""
        self._drain()
        return self.sink.flush()

    def cancel(self) -> None:
        """Final snapshot, cancel the timers, and write everything still buffered."""
        try:
            super().cancel()
        finally:
            state = self.state
            if hasattr(state, "on_changes_full") and state.on_changes_full == self._early_snapshot:
                state.on_changes_full = None
            self.flush()
            if self.sink.buffered_rows:
                logger.error(
                    "Closing %s with %d rows that could not be written: %s",
                    self.archive,
                    self.sink.buffered_rows,
                    self.sink.stats.last_error,
                )

    close = cancel

    def on_cleanup(self) -> None:
        """Compact and expire the archive by ``retention``, if set; the report is logged."""
        if self.retention is None:
            return
        from .maintenance import run_retention

        try:
            report = run_retention(self.location, self.retention)
        except NoArchiveError:
            logger.debug("Cleanup of %s: nothing written yet", self.archive)
            return
        except LockedError as exc:
            logger.warning("Cleanup of %s skipped this time: %s", self.archive, exc)
            return
        except Exception as exc:
            logger.error("Cleanup of %s failed: %r", self.archive, exc)
            return
        logger.info("Cleanup of %s: %s", self.archive, report)
