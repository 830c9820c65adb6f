"""Buffer record batches and flush them as hive-partitioned Parquet files, atomically.

The only module that writes data files (compaction and expiry write theirs with
:func:`open_writer` and :func:`write_temp` too). Each file is written under a hidden
temporary name (``.part-....parquet.tmp``, skipped by pyarrow, DuckDB and Polars)
in its partition, fsynced, and renamed into place once complete; the directory is
fsynced after (:class:`archiver.storage.Location`). Every file carries Parquet page
checksums.

Tables in step: one flush writes every temporary file first, then renames the
files of the other tables, then those of the commit table (``snapshots``). So a
snapshot's row is visible only once its task and worker rows are. A snapshot
whose other rows could not be written is held back with them and retried. The
files of one flush share a flush id in their names
(``part-<first>-<writer>-<flush>-<n>.parquet``): after a crash,
:func:`recover_flushes` renames the rest of a flush of which a file was renamed
(roll forward) and deletes the temporary files of one that renamed none (roll back).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
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
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .layout import TMP_SUFFIX, is_temp, partition_path
from .schema import HOUR_US, dictionary_columns
from .storage import Location, resolve

logger = logging.getLogger(__name__)

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
#: Write Parquet page checksums (CRC32) in every file. Only benchmarks turn it off.
PAGE_CHECKSUMS = True
#: The table whose rows are renamed into place last: readers can treat it as the
#: commit record of the other tables' rows with the same ``captured_at``.
COMMIT_TABLE = "snapshots"
#: A data file written by a sink flush; ``flush`` is ``<writer id>-<flush number>``.
FLUSH_FILE = re.compile(r"^part-\d{8}T\d{6}-(?P<flush>.+-\d{6})-\d{3,}\.parquet$")


def new_writer_id() -> str:
    """A short id unique across processes and machines (48 random bits)."""
    return uuid.uuid4().hex[:12]


def temp_path(location: Location, directory: str, name: str) -> str:
    """Where ``directory/name`` is written before its rename (itself on object stores)."""
    if location.atomic_rename:
        return f"{directory}/.{name}{TMP_SUFFIX}"
    return f"{directory}/{name}"


def open_writer(
    stream: pa.NativeFile,
    schema: pa.Schema,
    *,
    compression: str = "zstd",
    compression_level: int | None = None,
    use_dictionary: bool | list[str] | None = None,
) -> pq.ParquetWriter:
    """A Parquet writer with archiver's settings: statistics, page checksums, and the
    dictionary columns the schema asks for (:func:`archiver.schema.dictionary_columns`)."""
    if use_dictionary is None:
        use_dictionary = dictionary_columns(schema)
    return pq.ParquetWriter(
        stream,
        schema,
        compression=compression,
        compression_level=compression_level,
        write_statistics=True,
        use_dictionary=use_dictionary,
        write_page_checksum=PAGE_CHECKSUMS,
    )


def write_temp(
    location: Location,
    directory: str,
    name: str,
    table: pa.Table,
    *,
    compression: str = "zstd",
    compression_level: int | None = None,
    row_group_size: int = ROW_GROUP_SIZE,
    use_dictionary: bool | list[str] | None = None,
) -> tuple[str, int]:
    """Write ``table`` under the temporary name of ``directory/name``, fsynced; (path, size).

    Creates ``directory`` if needed. On failure the temporary file is removed and
    the exception propagates.
    """
    location.make_dirs(directory)
    target = temp_path(location, directory, name)
    try:
        with location.fs.open_output_stream(target) as out:
            with open_writer(
                out,
                table.schema,
                compression=compression,
                compression_level=compression_level,
                use_dictionary=use_dictionary,
            ) as writer:
                writer.write_table(table, row_group_size=row_group_size)
            size = out.tell()
        location.sync(target)
    except BaseException:
        with contextlib.suppress(Exception):  # the temporary file may not exist
            location.fs.delete_file(target)
        raise
    return target, size


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

    The final name appears only once the file is complete and fsynced (the
    directory is fsynced after the rename). The Parquet settings are :func:`write_temp`'s.
    """
    target, size = write_temp(
        location,
        directory,
        name,
        table,
        compression=compression,
        compression_level=compression_level,
        row_group_size=row_group_size,
        use_dictionary=use_dictionary,
    )
    final = f"{directory}/{name}"
    if target != final:
        try:
            location.rename(target, final)
        except BaseException:
            with contextlib.suppress(Exception):
                location.fs.delete_file(target)
            raise
    return size


def _is_valid_parquet(location: Location, path: str) -> bool:
    try:
        with location.fs.open_input_file(path) as f:
            pq.read_metadata(f)
    except Exception:
        return False
    return True


def recover_flushes(
    location: Location, *, min_age: float = 0.0, commit_table: str = COMMIT_TABLE
) -> tuple[int, int]:
    """Finish the flushes a crash interrupted; returns (files renamed, files deleted).

    A flush's temporary files are all complete and fsynced before its first rename,
    so if any file of the flush is in place, the rest are renamed (the commit table
    last); if none is, its temporary files are deleted (it never became visible).
    Only flushes whose temporary files are all older than ``min_age`` seconds are
    touched. Hidden and ``_`` directories are not searched.
    """
    if not location.atomic_rename:  # object stores: files are written under their final name
        return 0, 0
    try:
        temps, placed = _unfinished_flushes(location)
    except FileNotFoundError:
        return 0, 0
    now = time.time()
    renamed = deleted = 0
    for flush, infos in sorted(temps.items()):
        if any(i.mtime is not None and now - i.mtime.timestamp() < min_age for i in infos):
            continue  # may still be in progress
        if flush not in placed:
            deleted += _roll_back(location, flush, infos)
            continue
        done, gone = _roll_forward(location, flush, infos, commit_table)
        renamed, deleted = renamed + done, deleted + gone
    return renamed, deleted


def _unfinished_flushes(
    location: Location,
) -> tuple[dict[str, list[pafs.FileInfo]], set[str]]:
    """The temporary files in the archive by flush id, and the flushes with a file in place."""
    entries = location.fs.get_file_info(pafs.FileSelector(location.root, recursive=True))
    root = location.root.rstrip("/") + "/"
    temps: dict[str, list[pafs.FileInfo]] = {}
    placed: set[str] = set()
    for e in entries:
        if e.type != pafs.FileType.File or not e.path.startswith(root):
            continue
        *dirs, name = e.path[len(root) :].split("/")
        if not dirs or any(d.startswith((".", "_")) for d in dirs):
            continue
        if is_temp(name):
            match = FLUSH_FILE.match(name[1 : -len(TMP_SUFFIX)])
            if match:
                temps.setdefault(match["flush"], []).append(e)
        else:
            match = FLUSH_FILE.match(name)
            if match:
                placed.add(match["flush"])
    return temps, placed


def _roll_back(location: Location, flush: str, infos: list[pafs.FileInfo]) -> int:
    """Delete the temporary files of a flush that put none in place; how many."""
    for info in infos:
        with contextlib.suppress(FileNotFoundError):
            location.fs.delete_file(info.path)
    location.sync_parents(i.path for i in infos)
    logger.warning(
        "Removed %d temporary files of flush %s, interrupted before any was in place",
        len(infos),
        flush,
    )
    return len(infos)


def _roll_forward(
    location: Location, flush: str, infos: list[pafs.FileInfo], commit_table: str
) -> tuple[int, int]:
    """Rename the rest of a flush of which a file is in place, the commit table last; a
    damaged file is deleted, and so are the commit files of its partition. (renamed, deleted)"""
    root = location.root.rstrip("/") + "/"
    # table and partition of each file: <table>/<date=...>/<hour=...>/<name>
    where = {i.path: i.path[len(root) :].split("/", 1) for i in infos}
    bad: set[str] = set()  # partitions in which a non-commit file is damaged
    renamed = deleted = 0
    for last in (False, True):
        done = []
        for info in infos:
            table, rest = where[info.path]
            partition = rest.rsplit("/", 1)[0]
            if (table == commit_table) != last:
                continue
            if (last and partition in bad) or not _is_valid_parquet(location, info.path):
                logger.error(
                    "Deleted %s of flush %s: it, or a file it commits, is damaged",
                    info.path,
                    flush,
                )
                with contextlib.suppress(FileNotFoundError):
                    location.fs.delete_file(info.path)
                bad.add(partition)
                deleted += 1
                continue
            final = f"{info.path.rsplit('/', 1)[0]}/{info.base_name[1 : -len(TMP_SUFFIX)]}"
            with contextlib.suppress(FileNotFoundError):  # its writer, alive, renamed it
                location.rename(info.path, final, sync=False)
            done.append(final)
            renamed += 1
        location.sync_parents(done)
    logger.warning("Finished flush %s interrupted by a crash: %d files", flush, len(infos))
    return renamed, deleted


@dataclass
class _Part:
    """One file of a flush: the rows of one table and hour."""

    table: str
    bucket: int
    rows: pa.Table
    directory: str
    name: str
    temp: str = ""
    size: int = 0

    @property
    def final(self) -> str:
        return f"{self.directory}/{self.name}"


@dataclass
class _Flush:
    """The files of one flush, and which of its hours and tables failed."""

    id: str
    parts: list[_Part] = field(default_factory=list)
    #: Hours not to rename (a file of theirs failed).
    failed: set[int] = field(default_factory=set)
    #: A table could not be prepared: nothing is renamed.
    failed_all: bool = False
    #: Tables of which a rename failed: their later files wait for the retry.
    broken_tables: set[str] = field(default_factory=set)


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

    The rows of ``commit_table`` in an hour are renamed into place after the
    other tables' files, and only if all of that hour's other files were written
    (see the module's docstring). A new sink first finishes the flushes a crash
    interrupted in the archive (:func:`recover_flushes`).
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
        commit_table: str | None = COMMIT_TABLE,
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
        self.commit_table = commit_table
        self.stats = SinkStats()
        self._buffers: dict[str, list[pa.RecordBatch]] = {name: [] for name in schemas}
        self._rows = 0
        self._oldest: float | None = None
        self._retry_at = 0.0
        self._retry_delay = 0.0
        self._flushes = 0
        self._last_drop_log = -float("inf")
        self._lock = threading.Lock()  # the buffers; never held during I/O
        self._write_lock = threading.Lock()  # one flush at a time
        try:
            recover_flushes(self.location, commit_table=commit_table or "")
        except Exception as exc:  # the archive may be unreadable now: writes will tell
            logger.warning("Could not finish interrupted flushes in %s: %s", self.location.uri, exc)

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
            oldest = self._oldest  # set while rows are buffered
            return self._rows >= self.flush_rows or (
                oldest is not None and now - oldest >= self.flush_interval
            )

    def flush(self) -> list[str]:
        """Write every buffered row; returns the paths written. Never raises on I/O errors."""
        with self._write_lock:
            with self._lock:
                taken = {name: batches for name, batches in self._buffers.items() if batches}
                oldest = self._oldest
                self._buffers = {name: [] for name in self.schemas}
                self._rows = 0
                self._oldest = None
            kept: dict[str, list[pa.RecordBatch]] = {}
            written = self._write(taken, kept) if taken else []
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

    def _failed(self, exc: BaseException, what: str) -> None:
        self.stats.write_errors += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        logger.error(
            "Could not write %s (kept in memory, will retry): %s", what, self.stats.last_error
        )

    def _write(
        self, taken: dict[str, list[pa.RecordBatch]], kept: dict[str, list[pa.RecordBatch]]
    ) -> list[str]:
        """One flush: every temporary file first, then the renames, the commit table's last.

        Each hour is all or nothing: if any of its files fails, none of them is
        renamed (on object stores, where a file appears once written, no later one is
        written) and its rows go to ``kept`` for the retry. After one failure, a
        table's later hours wait for the retry too.
        """
        self._flushes += 1
        flush = _Flush(f"{self.writer_id}-{self._flushes:06d}")
        for name in sorted(taken, key=lambda n: n == self.commit_table):  # commit table last
            self._write_table(flush, name, taken[name], kept)
        written = self._rename_parts(flush, last=False) + self._rename_parts(flush, last=True)
        for part in flush.parts:
            if not part.temp:  # not written, held back, or its rename failed
                kept.setdefault(part.table, []).extend(part.rows.to_batches())
        return written

    def _write_table(
        self,
        flush: _Flush,
        name: str,
        batches: list[pa.RecordBatch],
        kept: dict[str, list[pa.RecordBatch]],
    ) -> None:
        """Write one table's temporary files, one per hour, until one fails."""
        try:
            table_parts = self._split(name, batches, flush.id, len(flush.parts))
        except Exception as exc:  # not an I/O error (those are handled): keep the rows
            self._failed(exc, f"{name} rows (could not prepare them)")
            logger.debug("Preparing %s rows failed", name, exc_info=True)
            kept[name] = batches
            flush.failed_all = True
            return
        broken = False
        for part in table_parts:
            flush.parts.append(part)
            if broken or flush.failed_all or part.bucket in flush.failed:
                flush.failed.add(part.bucket)
                continue
            try:
                part.temp, part.size = write_temp(
                    self.location,
                    part.directory,
                    part.name,
                    part.rows,
                    compression=self.compression,
                    compression_level=self.compression_level,
                    row_group_size=self.row_group_size,
                )
            except Exception as exc:
                self._failed(exc, f"{part.rows.num_rows} {name} rows to {part.directory}")
                broken = True
                flush.failed.add(part.bucket)

    def _rename_parts(self, flush: _Flush, *, last: bool) -> list[str]:
        """Rename the written files of the other tables (``last`` False) or of the commit
        table (True) into place, except those of failed hours; the paths in place."""
        done: list[str] = []
        for part in flush.parts:
            if (part.table == self.commit_table) != last or not part.temp:
                continue
            if part.temp != part.final and not self._rename_part(flush, part):
                continue
            done.append(part.final)
            self.stats.files.append(part.final)
            self.stats.files_written += 1
            self.stats.rows_written += part.rows.num_rows
            self.stats.bytes_written += part.size
        try:
            self.location.sync_parents(done)
        except OSError as exc:  # the files are in place; their directory may not be durable
            self._failed(exc, f"(fsync) the directories of {len(done)} files")
        return done

    def _rename_part(self, flush: _Flush, part: _Part) -> bool:
        """Rename one temporary file into place, unless its hour failed; whether it is."""
        if flush.failed_all or part.bucket in flush.failed or part.table in flush.broken_tables:
            flush.failed.add(part.bucket)  # its commit rows wait with it
            self._discard(part)
            return False
        error = self._rename(part)
        if error is None:
            return True
        self._failed(error, f"{part.rows.num_rows} {part.table} rows")
        flush.broken_tables.add(part.table)
        flush.failed.add(part.bucket)
        for other in flush.parts:  # its commit rows first, then it
            if other.bucket == part.bucket and other.table == self.commit_table:
                self._discard(other)
        self._discard(part)
        return False

    def _rename(self, part: _Part) -> Exception | None:
        """Rename ``part`` into place; the error, unless it is in place anyway (another
        process finished this flush, see :func:`recover_flushes`)."""
        if part.temp == part.final:
            return None
        try:
            self.location.rename(part.temp, part.final, sync=False)
        except Exception as exc:
            fs = self.location.fs
            with contextlib.suppress(Exception):
                if (
                    fs.get_file_info(part.final).type == pafs.FileType.File
                    and fs.get_file_info(part.temp).type == pafs.FileType.NotFound
                ):
                    return None
            return exc
        return None

    def _discard(self, part: _Part) -> None:
        """Delete a temporary file that will not be renamed; its rows are kept."""
        if part.temp and part.temp != part.final:
            with contextlib.suppress(Exception):
                self.location.fs.delete_file(part.temp)
        part.temp = ""

    def _split(
        self, name: str, batches: list[pa.RecordBatch], flush_id: str, start: int
    ) -> list[_Part]:
        """One table's rows as one sorted part per hour, named for this flush."""
        table = pa.Table.from_batches(batches, schema=self.schemas[name])
        micros = table.column("captured_at").cast(pa.int64()).to_numpy()
        if len(micros) > 1 and (np.diff(micros) < 0).any():  # usually already in order
            order = pc.sort_indices(table, [("captured_at", "ascending")])
            table = table.take(order)
            micros = micros[order.to_numpy()]
        buckets = micros // HOUR_US
        edges = (np.flatnonzero(np.diff(buckets)) + 1).tolist()
        parts: list[_Part] = []
        for lo, hi in zip([0, *edges], [*edges, len(buckets)]):
            # One chunk (and one dictionary per column) instead of one per snapshot:
            # the Parquet writer is up to 1.5x faster on it (bench/bench_camera.py).
            rows = table.slice(lo, hi - lo).combine_chunks()
            bucket = int(buckets[lo])
            first = datetime.fromtimestamp(int(micros[lo]) // 10**6, tz=timezone.utc)
            n = start + len(parts) + 1
            parts.append(
                _Part(
                    name,
                    bucket,
                    rows,
                    self.location.join(name, partition_path(bucket)),
                    f"part-{first:%Y%m%dT%H%M%S}-{flush_id}-{n:03d}.parquet",
                )
            )
        return parts

    def _enforce_bound(self) -> None:
        """Drop the oldest buffered rows beyond ``max_buffer_rows`` (lock held).

        Every row as old as the newest dropped one goes too, in every table, so a
        snapshot is dropped whole and the tables stay in step.
        """
        dropped_by_table: dict[str, int] = {}
        cutoff = None
        while self._rows > self.max_buffer_rows:
            name = min(
                (n for n, b in self._buffers.items() if b),
                key=lambda n: self._buffers[n][0].column("captured_at")[0].value,
            )
            oldest = self._buffers[name][0]
            excess = self._rows - self.max_buffer_rows
            if oldest.num_rows <= excess:
                self._buffers[name].pop(0)
                gone = oldest
            else:
                self._buffers[name][0] = oldest.slice(excess)
                gone = oldest.slice(0, excess)
            newest = pc.max(gone.column("captured_at")).value
            cutoff = newest if cutoff is None else max(cutoff, newest)
            self._rows -= gone.num_rows
            dropped_by_table[name] = dropped_by_table.get(name, 0) + gone.num_rows
        if cutoff is not None:
            limit = pa.scalar(cutoff, pa.int64())
            for name, batches in self._buffers.items():
                for i, batch in enumerate(batches):
                    keep = pc.greater(batch.column("captured_at").cast(pa.int64()), limit)
                    left = batch.filter(keep)
                    if left.num_rows < batch.num_rows:
                        batches[i] = left
                        gone_rows = batch.num_rows - left.num_rows
                        self._rows -= gone_rows
                        dropped_by_table[name] = dropped_by_table.get(name, 0) + gone_rows
                self._buffers[name] = [b for b in batches if b.num_rows]
            self.stats.rows_dropped += sum(dropped_by_table.values())
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
