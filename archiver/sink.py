"""Buffer record batches and flush them as hive-partitioned Parquet files, atomically.

The only module that writes data files. Each file is written under a hidden
temporary name (``.part-....parquet.tmp``, skipped by pyarrow, DuckDB and Polars)
in its partition and renamed into place once complete.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .storage import Location, resolve

logger = logging.getLogger(__name__)

HOUR_US = 3_600_000_000
TMP_PREFIX = ".part-"
TMP_SUFFIX = ".tmp"
#: Rows per row group: 64 Ki keeps row-group statistics useful for time pruning inside
#: big compacted files (see bench/bench_camera.py and the README).
ROW_GROUP_SIZE = 65_536


def partition_path(hour_bucket: int) -> str:
    """``date=YYYY-MM-DD/hour=H`` (hour not zero-padded, so every engine reads an integer)."""
    start = datetime.fromtimestamp(hour_bucket * 3600, tz=timezone.utc)
    return f"date={start:%Y-%m-%d}/hour={start.hour}"


def new_writer_id() -> str:
    """A short id unique across processes and machines."""
    return uuid.uuid4().hex[:12]


def write_file(
    location: Location,
    directory: str,
    name: str,
    table: pa.Table,
    *,
    compression: str = "zstd",
    compression_level: int | None = None,
    row_group_size: int = ROW_GROUP_SIZE,
) -> int:
    """Write ``table`` as ``directory/name`` via a hidden temporary file; returns its size."""
    fs = location.fs
    fs.create_dir(directory, recursive=True)
    final = f"{directory}/{name}"
    target = f"{directory}/.{name}{TMP_SUFFIX}" if location.atomic_rename else final
    try:
        with fs.open_output_stream(target) as out:
            pq.write_table(
                table,
                out,
                compression=compression,
                compression_level=compression_level,
                row_group_size=row_group_size,
                write_statistics=True,
                use_dictionary=True,
            )
            if location.local:
                out.flush()
        if target != final:
            fs.move(target, final)
    except BaseException:
        try:
            fs.delete_file(target)
        except Exception:  # noqa: S110  (the temporary file may not exist)
            pass
        raise
    return fs.get_file_info(final).size


@dataclass
class SinkStats:
    """Counters since the sink was created."""

    rows_buffered: int = 0
    rows_written: int = 0
    files_written: int = 0
    bytes_written: int = 0
    write_errors: int = 0
    rows_dropped: int = 0
    last_error: str | None = None
    files: list[str] = field(default_factory=list, repr=False)


class ParquetSink:
    """Buffers Arrow batches per table and writes them under ``<archive>/<table>/...``.

    Flushes when the buffer holds ``flush_rows`` rows or its oldest row is older
    than ``flush_interval`` seconds. A failed write is logged and its rows stay
    buffered for the next flush (with a growing delay); beyond ``max_buffer_rows``
    the oldest rows are dropped and counted in ``stats.rows_dropped``.
    """

    def __init__(
        self,
        archive: str | os.PathLike[str] | Location,
        schemas: dict[str, pa.Schema],
        *,
        compression: str = "zstd",
        compression_level: int | None = None,
        row_group_size: int = ROW_GROUP_SIZE,
        flush_rows: int = 100_000,
        flush_interval: float = 60.0,
        max_buffer_rows: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if flush_rows < 1 or max_buffer_rows < flush_rows:
            raise ValueError("need 1 <= flush_rows <= max_buffer_rows")
        if flush_interval <= 0:
            raise ValueError(f"flush_interval must be > 0 seconds, got {flush_interval!r}")
        self.location = archive if isinstance(archive, Location) else resolve(archive)
        self.schemas = schemas
        self.compression = compression
        self.compression_level = compression_level
        self.row_group_size = row_group_size
        self.flush_rows = flush_rows
        self.flush_interval = flush_interval
        self.max_buffer_rows = max_buffer_rows
        self.clock = clock
        self.writer_id = new_writer_id()
        self.stats = SinkStats()
        self._buffers: dict[str, list[pa.RecordBatch]] = {name: [] for name in schemas}
        self._rows = 0
        self._oldest: float | None = None
        self._retry_at = 0.0
        self._retry_delay = 0.0
        self._seq = 0
        self._lock = threading.RLock()

    @property
    def buffered_rows(self) -> int:
        return self._rows

    def append(self, table: str, batch: pa.RecordBatch) -> None:
        """Buffer ``batch`` for ``table``."""
        if batch.num_rows == 0:
            return
        with self._lock:
            self._buffers[table].append(batch)
            self._rows += batch.num_rows
            self.stats.rows_buffered += batch.num_rows
            if self._oldest is None:
                self._oldest = self.clock()
            self._enforce_bound()

    def due(self) -> bool:
        """Whether the buffer should be flushed now."""
        with self._lock:
            if not self._rows:
                return False
            now = self.clock()
            if now < self._retry_at:
                return False
            return self._rows >= self.flush_rows or now - self._oldest >= self.flush_interval

    def flush(self) -> list[str]:
        """Write every buffered row; returns the paths written. Never raises on I/O errors."""
        with self._lock:
            written: list[str] = []
            failed = False
            for name, batches in self._buffers.items():
                if not batches:
                    continue
                self._buffers[name] = []
                self._rows -= sum(b.num_rows for b in batches)
                remaining = self._write_table(name, batches, written)
                if remaining:
                    failed = True
                    self._buffers[name] = remaining + self._buffers[name]
                    self._rows += sum(b.num_rows for b in remaining)
            if failed:
                self._retry_delay = min(max(1.0, self._retry_delay * 2), self.flush_interval)
                self._retry_at = self.clock() + self._retry_delay
            else:
                self._retry_delay = self._retry_at = 0.0
            self._oldest = self.clock() if self._rows else None
            return written

    def _write_table(
        self, name: str, batches: list[pa.RecordBatch], written: list[str]
    ) -> list[pa.RecordBatch]:
        table = pa.Table.from_batches(batches, schema=self.schemas[name])
        table = table.take(pc.sort_indices(table, [("captured_at", "ascending")]))
        micros = table.column("captured_at").cast(pa.int64()).to_numpy()
        buckets = micros // HOUR_US
        edges = np.flatnonzero(np.diff(buckets)) + 1
        starts = [0, *edges.tolist()]
        ends = [*edges.tolist(), len(buckets)]
        for lo, hi in zip(starts, ends):
            part = table.slice(lo, hi - lo)
            directory = self.location.join(name, partition_path(int(buckets[lo])))
            first = datetime.fromtimestamp(micros[lo] / 1e6, tz=timezone.utc)
            self._seq += 1
            file_name = f"part-{first:%Y%m%dT%H%M%S}-{self.writer_id}-{self._seq:06d}.parquet"
            try:
                size = write_file(
                    self.location,
                    directory,
                    file_name,
                    part,
                    compression=self.compression,
                    compression_level=self.compression_level,
                    row_group_size=self.row_group_size,
                )
            except Exception as exc:
                self.stats.write_errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                logger.error(
                    "Could not write %d %s rows to %s (kept in memory, will retry): %s",
                    table.num_rows - lo,
                    name,
                    directory,
                    self.stats.last_error,
                )
                return table.slice(lo).combine_chunks().to_batches()
            path = f"{directory}/{file_name}"
            written.append(path)
            self.stats.files.append(path)
            self.stats.files_written += 1
            self.stats.rows_written += part.num_rows
            self.stats.bytes_written += size
        return []

    def _enforce_bound(self) -> None:
        """Drop the oldest buffered rows beyond ``max_buffer_rows``."""
        while self._rows > self.max_buffer_rows:
            name = min(
                (n for n, b in self._buffers.items() if b),
                key=lambda n: self._buffers[n][0].column("captured_at")[0].value,
            )
            oldest = self._buffers[name][0]
            excess = self._rows - self.max_buffer_rows
            if oldest.num_rows <= excess:
                self._buffers[name].pop(0)
                dropped = oldest.num_rows
            else:
                self._buffers[name][0] = oldest.slice(excess)
                dropped = excess
            self._rows -= dropped
            self.stats.rows_dropped += dropped
            logger.error(
                "Write buffer full (%d rows): dropped the %d oldest %s rows",
                self.max_buffer_rows,
                dropped,
                name,
            )
