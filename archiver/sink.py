"""Buffer record batches and flush them as hive-partitioned Parquet files, atomically.

The only module that writes data files. Each file is written under a hidden
temporary name (``.part-....parquet.tmp``, skipped by pyarrow, DuckDB and Polars)
in its partition and renamed into place once complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .schema import HOUR_US, dictionary_columns
from .storage import Location, resolve

logger = logging.getLogger(__name__)

TMP_PREFIX = ".part-"
TMP_SUFFIX = ".tmp"
#: Rows per row group. One default row group (up to 1 Mi rows) leaves nothing for
#: row-group statistics to prune inside a big (compacted) file: a 2-hour, 3-column query
#: on a day of 1M task rows in one file took 82 ms, against 14 ms with 64 Ki-row groups
#: (128 Ki: 15 ms) in ``bench/bench_camera.py``; the notes measured 29 vs 9 ms for
#: 8% more bytes (42.0 vs 45.5 B/row, ``../shared/notes/parquet.md`` B3/B5). Files
#: written per flush (up to ``flush_rows``) have one or two groups either way.
ROW_GROUP_SIZE = 65_536
#: How many written paths ``SinkStats.files`` remembers (it must not grow forever).
RECENT_FILES = 1000
#: At most one "buffer full, dropped rows" error per this many seconds.
DROP_LOG_INTERVAL = 60.0
#: Hours since the epoch up to 10000-01-01: no partition folder is made outside 1970..9999.
LAST_HOUR = 253_402_300_800 // 3600


def partition_path(hour_bucket: int) -> str:
    """``date=YYYY-MM-DD/hour=H`` of an hour since the epoch (UTC).

    ``hour`` is not zero-padded, so pyarrow, DuckDB and Polars all read an integer.
    Outside 1970..9999 it raises ValueError (the rows stay buffered and are counted).
    """
    if not 0 <= hour_bucket < LAST_HOUR:
        raise ValueError(f"captured_at hour {hour_bucket} is outside the years 1970..9999")
    start = datetime.fromtimestamp(hour_bucket * 3600, tz=timezone.utc)
    return f"date={start:%Y-%m-%d}/hour={start.hour}"


def new_writer_id() -> str:
    """A short id unique across processes and machines (48 random bits)."""
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
    use_dictionary: bool | list[str] | None = None,
) -> int:
    """Write ``table`` as ``directory/name`` via a hidden temporary file; returns its size.

    On failure the temporary file is removed and the exception propagates; the
    final name appears only once the file is complete. ``use_dictionary`` defaults
    to what the table's schema asks for (:func:`archiver.schema.dictionary_columns`).
    """
    if use_dictionary is None:
        use_dictionary = dictionary_columns(table.schema)
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
                use_dictionary=use_dictionary,
                write_page_checksum=True,
            )
            size = out.tell()
        if target != final:
            fs.move(target, final)
    except BaseException:
        with contextlib.suppress(Exception):  # the temporary file may not exist
            fs.delete_file(target)
        raise
    return size


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
    #: The most recent paths written (at most ``RECENT_FILES``).
    files: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_FILES), repr=False)


class ParquetSink:
    """Buffers Arrow batches per table and writes them under ``<archive>/<table>/...``.

    Flushes when the buffer holds ``flush_rows`` rows or its oldest row is older
    than ``flush_interval`` seconds (by ``clock``, monotonic by default). Each flush
    writes one file per table and hour, sorted by ``captured_at``, with the table's
    schema. A failed write is logged and its rows stay buffered for the next flush
    (tried again after 1, 2, 4... seconds, at most ``flush_interval``); beyond
    ``max_buffer_rows`` the oldest rows are dropped and counted in
    ``stats.rows_dropped``. :meth:`flush` never raises on I/O errors, and
    :meth:`append` never waits for a write in progress.
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
        writer_id: str | None = None,
    ) -> None:
        if flush_rows < 1 or max_buffer_rows < flush_rows:
            raise ValueError(
                f"need 1 <= flush_rows <= max_buffer_rows, got {flush_rows} and {max_buffer_rows}"
            )
        if not flush_interval > 0:
            raise ValueError(f"flush_interval must be > 0 seconds, got {flush_interval!r}")
        if row_group_size < 1:
            raise ValueError(f"row_group_size must be >= 1, got {row_group_size!r}")
        for name, schema in schemas.items():
            if "captured_at" not in schema.names or not pa.types.is_timestamp(
                schema.field("captured_at").type
            ):
                raise ValueError(f"schema of table {name!r} needs a timestamp column captured_at")
        self.location = archive if isinstance(archive, Location) else resolve(archive)
        self.schemas = dict(schemas)
        self.compression = compression
        self.compression_level = compression_level
        self.row_group_size = row_group_size
        self.flush_rows = flush_rows
        self.flush_interval = flush_interval
        self.max_buffer_rows = max_buffer_rows
        self.clock = clock
        self.writer_id = writer_id or new_writer_id()
        self.stats = SinkStats()
        self._buffers: dict[str, list[pa.RecordBatch]] = {name: [] for name in schemas}
        self._rows = 0
        self._oldest: float | None = None
        self._retry_at = 0.0
        self._retry_delay = 0.0
        self._seq = 0
        self._last_drop_log = -float("inf")
        self._lock = threading.Lock()  # the buffers; never held during I/O
        self._write_lock = threading.Lock()  # one flush at a time

    def __repr__(self) -> str:
        return f"ParquetSink({self.location.uri!r}, buffered_rows={self._rows})"

    @property
    def buffered_rows(self) -> int:
        """Rows waiting to be written (not counting a flush in progress)."""
        return self._rows

    def append(self, table: str, batch: pa.RecordBatch | pa.Table) -> None:
        """Buffer ``batch`` for ``table`` (cast to the table's schema if it differs)."""
        schema = self.schemas.get(table)
        if schema is None:
            raise KeyError(f"unknown table {table!r}: the sink has {', '.join(self.schemas)}")
        if batch.num_rows == 0:
            return
        if isinstance(batch, pa.Table):
            for chunk in batch.to_batches():
                self.append(table, chunk)
            return
        if not batch.schema.equals(schema):  # metadata aside
            batch = batch.select(schema.names).cast(schema)
        elif batch.schema.metadata != schema.metadata:
            batch = batch.replace_schema_metadata(schema.metadata)
        if batch.column("captured_at").null_count:
            raise ValueError(f"captured_at of a {table!r} batch has nulls")
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
        with self._write_lock:
            with self._lock:
                taken = {name: batches for name, batches in self._buffers.items() if batches}
                oldest = self._oldest
                self._buffers = {name: [] for name in self.schemas}
                self._rows = 0
                self._oldest = None
            written: list[str] = []
            kept: dict[str, list[pa.RecordBatch]] = {}
            for name, batches in taken.items():
                try:
                    remaining = self._write_table(name, batches, written)
                except Exception as exc:  # not an I/O error (those are handled): keep the rows
                    self.stats.write_errors += 1
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"
                    logger.exception("Could not prepare %s rows for writing (kept)", name)
                    remaining = batches
                if remaining:
                    kept[name] = remaining
            with self._lock:
                if kept:
                    for name, remaining in kept.items():
                        self._buffers[name][:0] = remaining
                        self._rows += sum(b.num_rows for b in remaining)
                    self._oldest = oldest
                    self._retry_delay = min(max(1.0, self._retry_delay * 2), self.flush_interval)
                    self._retry_at = self.clock() + self._retry_delay
                    self._enforce_bound()
                else:
                    self._retry_delay = self._retry_at = 0.0
                if self._rows and self._oldest is None:
                    self._oldest = self.clock()
            return written

    def _write_table(
        self, name: str, batches: list[pa.RecordBatch], written: list[str]
    ) -> list[pa.RecordBatch]:
        """Write one table's rows (one file per hour); returns the rows not written."""
        table = pa.Table.from_batches(batches, schema=self.schemas[name])
        micros = table.column("captured_at").cast(pa.int64()).to_numpy()
        if len(micros) > 1 and (np.diff(micros) < 0).any():  # usually already in order
            order = pc.sort_indices(table, [("captured_at", "ascending")])
            table = table.take(order)
            micros = micros[order.to_numpy()]
        buckets = micros // HOUR_US
        edges = (np.flatnonzero(np.diff(buckets)) + 1).tolist()
        for lo, hi in zip([0, *edges], [*edges, len(buckets)]):
            # One chunk (and one dictionary per column) instead of one per snapshot:
            # the Parquet writer is up to 1.5x faster on it (bench/bench_camera.py).
            part = table.slice(lo, hi - lo).combine_chunks()
            directory = self.location.join(name, partition_path(int(buckets[lo])))
            first = datetime.fromtimestamp(int(micros[lo]) // 10**6, tz=timezone.utc)
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
        """Drop the oldest buffered rows beyond ``max_buffer_rows`` (lock held)."""
        dropped_by_table: dict[str, int] = {}
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
            dropped_by_table[name] = dropped_by_table.get(name, 0) + dropped
        if dropped_by_table:
            now = time.monotonic()
            if now - self._last_drop_log >= DROP_LOG_INTERVAL:
                self._last_drop_log = now
                logger.error(
                    "Write buffer full (%d rows, writes failing: %s): dropped the oldest rows "
                    "(%s); %d dropped so far",
                    self.max_buffer_rows,
                    self.stats.last_error,
                    ", ".join(f"{n} {t}" for t, n in dropped_by_table.items()),
                    self.stats.rows_dropped,
                )
