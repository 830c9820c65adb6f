"""Compaction and expiry that never lose a row and never show one twice.

Design
======

Every change to the files of a partition is one *commit*, made by renames only.
A maintenance run holds the archive's lock (:mod:`archiver.lock`) and, for each
partition it changes:

1. reads the input files (the visible files it chose, listed by name);
2. writes their rows (sorted by ``captured_at``; for expiry, without the expired
   tasks) as one or more new files under hidden temporary names
   (``.part-...-compact-<group>-NNN.parquet.tmp``). Each new file records in its
   Parquet metadata ``archiver.replaces``, the inputs' names, and
   ``archiver.group``, the names of all the files written together;
3. renames the new files into place, one by one;
4. once every partition is done, deletes the inputs.

Readers (:meth:`archiver.Archive.partition_files`) decide what is visible from a
directory listing alone:

* names starting with ``.`` or ``_`` are never read (temporary and foreign files);
* a compacted file is *live* when all of its group is present, or when none of
  the files it replaces is left (later, one member of a group may itself be
  compacted away; the others stay live);
* a file replaced by a live compacted file is not read.

So before step 3 completes a reader sees exactly the inputs (a half-renamed group
is ignored), after it exactly the new files (the inputs are hidden even while they
still exist), and a ``kill -9`` anywhere leaves one of these two states. The next
run *finishes the job* first, under the lock, before planning anything: it
deletes the files of a half-renamed group (garbage: their rows are still in the
inputs; this must come first, since with its inputs gone such a group would count
as live), then the inputs of a committed one, then empty tombstones, then
archiver's own temporary files older than an hour (``.part-*.tmp``) and
partition directories renamed aside by an interrupted expiry. Files it did not
list (a recorder's new file in the same partition) are never touched: only named
inputs are deleted. Foreign files (``_SUCCESS``, ``.crc``, other ``.tmp``) are
left alone.

A reader that listed the files just before step 4 may find an input gone;
:meth:`archiver.Archive.read` then lists again and rereads, and gets the new
files. Deleting all inputs at the end keeps that window short.

Compaction only touches *closed* partitions: hours that ended before ``before``
(default: now). Files near the target size are left alone, so a second run does
nothing. Expiry of whole partitions renames the hour directory aside
(``.hour=H.expired-<id>``, invisible) and then deletes it; expiry of tasks by
state rewrites the partitions holding their rows, oldest first, so that a task's
last row (which decides its state) goes last: an interrupted expiry never leaves
a task looking younger or in another state, and the next run removes the rest.
When every row of a partition's inputs expires, the commit is a 0-row
"tombstone" file that replaces them; it is deleted once its inputs are gone.

On object stores (no atomic rename) the new files are written under their final
names; an upload becomes visible only when complete, so the same rules hold.

Limits: a partition (one hour of one table) is merged in memory. The lock is an
``fcntl.flock``: it serializes cleanups on one host (and on network filesystems
only as far as their ``flock`` does; for a remote archive the lock file is local).
If a recorder writes a new row for a task at the moment expiry removes it, only
the new row remains.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .archive import (
    COMPACT_MARK,
    GROUP_KEY,
    KEEP_KEY,
    REPLACES_KEY,
    Archive,
    CompactInfo,
    Partition,
    compact_info,
    is_hidden,
    live_compacted,
    visible_names,
)
from .errors import ArchiverError, NoArchiveError
from .lock import MaintenanceLock
from .schema import ENTITY_KEYS, SCHEMAS, TASK_STATES, with_metadata
from .sink import ROW_GROUP_SIZE, TMP_PREFIX, TMP_SUFFIX, new_writer_id
from .storage import Location
from .timeparse import parse_duration, parse_time

logger = logging.getLogger("archiver.cleanup")

Keep = Literal["all", "latest"]
#: Called as ``progress(done, total)`` after each partition.
Progress = Callable[[int, int], None]

MIB = 1024 * 1024
HOUR_US = 3_600_000_000
DEFAULT_TARGET_FILE_BYTES = 128 * MIB
#: Files at least this fraction of the target size are left alone.
NEAR_TARGET = 0.75
#: archiver's own temporary files older than this (seconds) are removed.
TEMP_MAX_AGE = 3600.0
EXPIRED_MARK = ".expired-"
#: Seconds to wait for another cleanup by default (``run_retention`` does not wait).
DEFAULT_LOCK_TIMEOUT = 10.0
#: Test hook: called with a step name ("written", "renamed", "deleted") after each file.
_STEP_HOOK: Callable[[str], None] | None = None


# -- parsing -----------------------------------------------------------------
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)


def parse_size(value: Any) -> int:
    """Bytes from an int or a string such as ``"128MiB"``, ``"64MB"``, ``"512k"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ArchiverError(f"invalid size {value!r}: use bytes or a unit, such as 128MiB")
        unit = (match.group(2) or "").lower().rstrip("b").rstrip("i")
        size = int(float(match.group(1)) * 1024 ** " kmgt".index(unit or " "))
    if size < 1:
        raise ArchiverError(f"invalid size {value!r}: it must be at least 1 byte")
    return size


def parse_per_state(value: Mapping[str, Any] | Iterable[str] | None) -> dict[str, pd.Timedelta]:
    """``{"SUCCESS": "1d"}`` or ``["SUCCESS=1d", ...]`` as ``{state: Timedelta}``."""
    if not value:
        return {}
    items: list[tuple[str, Any]] = []
    if isinstance(value, Mapping):
        items = list(value.items())
    else:
        for entry in value:
            state, sep, duration = str(entry).partition("=")
            if not sep or not state.strip():
                raise ArchiverError(
                    f"invalid state retention {entry!r}: use STATE=DURATION, such as SUCCESS=1d"
                )
            items.append((state, duration))
    return {
        str(s).strip().upper(): parse_duration(d, what=f"state {str(s).strip().upper()}")
        for s, d in items
    }


def _now(now: Any = None) -> pd.Timestamp:
    wall = pd.Timestamp(time.time(), unit="s", tz="UTC")
    return wall if now is None else parse_time(now, now=wall)


def _micros(ts: pd.Timestamp) -> int:
    return int(ts.value // 1000)


def _check_keep(keep: str) -> Keep:
    if keep not in ("all", "latest"):
        raise ArchiverError(f"invalid keep {keep!r}: use 'all' or 'latest'")
    return keep  # type: ignore[return-value]


# -- configuration and reports ------------------------------------------------
@dataclass(frozen=True)
class Retention:
    """What a periodic cleanup does: expire, then compact.

    Args:
        older_than: drop whole partitions whose hour ended longer ago than this.
        per_state: drop tasks whose last row is older than their state's duration.
        compact: merge the small files of closed partitions.
        keep: ``"latest"`` keeps only the last row per task/worker and partition.
        target_file_bytes: compacted file size.
        tables: the tables to clean (default: all).

    Example:
        >>> policy = Retention(older_than="30d", per_state={"success": "1d"})
        >>> policy.older_than, policy.per_state
        (Timedelta('30 days 00:00:00'), {'SUCCESS': Timedelta('1 days 00:00:00')})
    """

    older_than: pd.Timedelta | None = None
    per_state: Mapping[str, pd.Timedelta] = field(default_factory=dict)
    compact: bool = True
    keep: Keep = "all"
    target_file_bytes: int = DEFAULT_TARGET_FILE_BYTES
    tables: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.older_than is not None:
            object.__setattr__(
                self, "older_than", parse_duration(self.older_than, what="older_than")
            )
        object.__setattr__(self, "per_state", parse_per_state(self.per_state))
        object.__setattr__(self, "keep", _check_keep(self.keep))
        object.__setattr__(self, "target_file_bytes", parse_size(self.target_file_bytes))
        if self.tables is not None:
            tables = (self.tables,) if isinstance(self.tables, str) else self.tables
            object.__setattr__(self, "tables", tuple(tables))

    FIELDS = ("older_than", "per_state", "compact", "keep", "target_file_bytes", "tables")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Retention:
        """From a dict with the field names (as in a retention file)."""
        unknown = sorted(set(data) - set(cls.FIELDS))
        if unknown:
            raise ArchiverError(
                f"unknown retention setting(s) {', '.join(unknown)}: use {', '.join(cls.FIELDS)}"
            )
        return cls(**dict(data))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Retention:
        """From a JSON file, or a TOML file (Python 3.11+)."""
        text_path = os.fspath(path)
        try:
            with open(text_path, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise ArchiverError(f"cannot read retention file {text_path}: {exc.strerror}") from exc
        if text_path.endswith(".toml"):
            if sys.version_info < (3, 11):
                raise ArchiverError(
                    f"cannot read {text_path}: TOML needs Python 3.11+; write the file as JSON"
                )
            import tomllib

            try:
                data = tomllib.loads(raw.decode())
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ArchiverError(f"invalid TOML in {text_path}: {exc}") from exc
        else:
            try:
                data = json.loads(raw)
            except ValueError as exc:
                raise ArchiverError(f"invalid JSON in {text_path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ArchiverError(f"{text_path} must hold a table of settings")
        return cls.from_mapping(data)

    @classmethod
    def coerce(cls, value: Retention | Mapping[str, Any] | str | os.PathLike[str]) -> Retention:
        """A Retention from itself, a mapping, or the path of a retention file."""
        if isinstance(value, Retention):
            return value
        if isinstance(value, Mapping):
            return cls.from_mapping(value)
        return cls.from_file(value)


@dataclass(frozen=True)
class PartitionCompaction:
    """What compaction did (or would do) to one partition."""

    table: str
    date: str
    hour: int
    files_in: int
    files_out: int
    rows_in: int
    rows_out: int
    bytes_in: int
    bytes_out: int


@dataclass(frozen=True)
class CompactionReport:
    """The result of :func:`compact`; ``files_out``/``bytes_out`` are estimates in a dry run."""

    partitions: tuple[PartitionCompaction, ...] = ()
    seconds: float = 0.0
    dry_run: bool = False
    #: Files removed to finish interrupted runs, and stale temporary files removed.
    recovered: int = 0
    temps_removed: int = 0

    @property
    def files_in(self) -> int:
        return sum(p.files_in for p in self.partitions)

    @property
    def files_out(self) -> int:
        return sum(p.files_out for p in self.partitions)

    @property
    def rows(self) -> int:
        return sum(p.rows_out for p in self.partitions)

    @property
    def bytes_in(self) -> int:
        return sum(p.bytes_in for p in self.partitions)

    @property
    def bytes_out(self) -> int:
        return sum(p.bytes_out for p in self.partitions)

    def __str__(self) -> str:
        verb = "would compact" if self.dry_run else "compacted"
        return (
            f"{verb} {len(self.partitions)} partitions: {self.files_in} -> {self.files_out} "
            f"files, {self.rows} rows, {self.bytes_in} -> {self.bytes_out} bytes "
            f"in {self.seconds:.2f}s"
        )


@dataclass(frozen=True)
class PartitionExpiry:
    """A whole partition that expired (or would)."""

    table: str
    date: str
    hour: int
    files: int
    rows: int
    bytes: int


@dataclass(frozen=True)
class StateExpiry:
    """Tasks of one state that expired (or would), with all their rows."""

    state: str
    retention: pd.Timedelta
    tasks: int
    rows: int


@dataclass(frozen=True)
class ExpiryReport:
    """The result of :func:`expire`: what went, or in a dry run what would go."""

    now: pd.Timestamp
    dry_run: bool = True
    partitions: tuple[PartitionExpiry, ...] = ()
    states: tuple[StateExpiry, ...] = ()
    #: uuids of the expired tasks, sorted.
    uuids: tuple[str, ...] = ()
    #: task partitions rewritten without the expired tasks.
    rewritten: int = 0
    seconds: float = 0.0

    @property
    def files(self) -> int:
        return sum(p.files for p in self.partitions)

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.partitions) + sum(s.rows for s in self.states)

    def __str__(self) -> str:
        verb = "would expire" if self.dry_run else "expired"
        return (
            f"{verb} {len(self.partitions)} partitions ({self.files} files) and "
            f"{len(self.uuids)} tasks: {self.rows} rows in {self.seconds:.2f}s"
        )


@dataclass(frozen=True)
class CleanupReport:
    """The result of :func:`run_retention`: expiry, then compaction."""

    expiry: ExpiryReport | None
    compaction: CompactionReport | None
    seconds: float = 0.0

    def __str__(self) -> str:
        parts = [str(r) for r in (self.expiry, self.compaction) if r is not None]
        return "; ".join(parts) or "nothing to do"


# -- listing -----------------------------------------------------------------
@dataclass
class _Scan:
    """One partition's files, as a maintenance run sees them."""

    files: dict[str, pafs.FileInfo] = field(default_factory=dict)
    infos: dict[str, CompactInfo] = field(default_factory=dict)
    visible: list[pafs.FileInfo] = field(default_factory=list)
    #: Leftovers of interrupted runs, in the order they must be deleted.
    garbage: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    tombstones: list[str] = field(default_factory=list)
    temps: list[str] = field(default_factory=list)

    @property
    def leftovers(self) -> list[str]:
        return self.garbage + self.replaced + self.tombstones


def _scan(location: Location, partition: Partition, wall: float) -> _Scan:
    try:
        entries = location.fs.get_file_info(pafs.FileSelector(partition.path))
    except FileNotFoundError:
        return _Scan()
    scan = _Scan()
    for e in entries:
        if e.type != pafs.FileType.File:
            continue
        name = e.base_name
        if name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX):
            if e.mtime is not None and wall - e.mtime.timestamp() > TEMP_MAX_AGE:
                scan.temps.append(e.path)
        elif not is_hidden(name) and name.endswith(".parquet"):
            scan.files[name] = e
    for name, e in scan.files.items():
        if COMPACT_MARK in name:
            scan.infos[name] = compact_info(location, e)
    present = set(scan.files)
    live = live_compacted(present, scan.infos)
    visible = visible_names(present, scan.infos)
    scan.visible = sorted((scan.files[n] for n in visible), key=lambda i: i.base_name)
    scan.garbage = sorted(n for n in scan.infos if n not in live)
    scan.replaced = sorted(n for n in present - visible if n in live or n not in scan.infos)
    scan.tombstones = sorted(
        n for n in live & visible if scan.infos[n].rows == 0 and scan.infos[n].group == {n}
    )
    return scan


def _delete(location: Location, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        location.fs.delete_file(path)
    if _STEP_HOOK is not None:
        _STEP_HOOK("deleted")


def _finish(location: Location, partition: Partition, scan: _Scan) -> tuple[int, int]:
    """Delete the leftovers of interrupted runs (in order) and stale temps."""
    for name in scan.leftovers:
        _delete(location, f"{partition.path}/{name}")
    for path in scan.temps:
        _delete(location, path)
    return len(scan.leftovers), len(scan.temps)


def _remove_set_aside(location: Location, table: str) -> int:
    """Delete partition directories renamed aside by an interrupted expiry."""
    removed = 0
    root = location.join(table)
    try:
        days = location.fs.get_file_info(pafs.FileSelector(root))
    except FileNotFoundError:
        return 0
    for day in days:
        if day.type != pafs.FileType.Directory or not day.base_name.startswith("date="):
            continue
        for entry in location.fs.get_file_info(pafs.FileSelector(day.path)):
            if entry.type == pafs.FileType.Directory and EXPIRED_MARK in entry.base_name:
                location.fs.delete_dir(entry.path)
                removed += 1
    return removed


# -- reading and writing ---------------------------------------------------------
def _target_schema(table: str, fragments: list[ds.ParquetFileFragment]) -> pa.Schema:
    """The schema to write: archiver's for its tables, widened by any extra input column."""
    base = with_metadata(SCHEMAS[table], table) if table in SCHEMAS else None
    schemas = [f.physical_schema for f in fragments]
    if base is not None and all(set(s.names) <= set(base.names) for s in schemas):
        return base
    unified = pa.unify_schemas(
        ([base] if base is not None else []) + [s.remove_metadata() for s in schemas],
        promote_options="permissive",
    )
    return unified.with_metadata(base.metadata if base is not None else schemas[0].metadata)


def _read(location: Location, table: str, paths: list[str]) -> tuple[pa.Table, pa.Schema]:
    fmt = ds.ParquetFileFormat()
    fragments = [fmt.make_fragment(p, filesystem=location.fs) for p in paths]
    schema = _target_schema(table, fragments)
    dataset = ds.FileSystemDataset(fragments, schema.remove_metadata(), fmt, location.fs)
    return dataset.to_table(), schema


def _sorted(data: pa.Table) -> pa.Table:
    """Rows by ``captured_at`` (then ``snapshot_id``); stable, and a no-op when in order."""
    if data.num_rows < 2 or "captured_at" not in data.column_names:
        return data
    micros = data.column("captured_at").cast(pa.int64()).to_numpy()
    if not (np.diff(micros) < 0).any():
        return data
    keys = [("captured_at", "ascending")]
    if "snapshot_id" in data.column_names:
        keys.append(("snapshot_id", "ascending"))
    return data.take(pc.sort_indices(data, keys))


def latest_rows(data: pa.Table, key: str) -> pa.Table:
    """The last row (by ``captured_at``, then ``snapshot_id``) of each ``key``, in time order."""
    if data.num_rows == 0:
        return data
    data = _sorted(data)
    keys = data.column(key)
    if pa.types.is_dictionary(keys.type):
        keys = keys.cast(pa.string())
    index = pa.table({"k": keys, "i": pa.array(np.arange(data.num_rows), pa.int64())})
    last = index.group_by("k", use_threads=False).aggregate([("i", "max")]).column("i_max")
    return data.take(np.sort(last.to_numpy()))


@dataclass
class _Output:
    name: str
    final: str
    target: str
    stream: Any
    writer: pq.ParquetWriter
    rows: int = 0
    size: int = 0


def _write_group(
    location: Location,
    directory: str,
    data: pa.Table,
    schema: pa.Schema,
    *,
    replaces: Sequence[str],
    keep: Keep,
    target_bytes: int,
    slice_rows: int,
) -> list[_Output]:
    """Write ``data`` as a group of files of about ``target_bytes``, renamed into place last.

    Every file records the group and the files it replaces. Returns the outputs
    once all are in place (the commit); on error, removes what it wrote.
    """
    fs = location.fs
    gid = new_writer_id()
    outs: list[_Output] = []
    micros = data.column("captured_at").cast(pa.int64()).to_numpy() if data.num_rows else None

    def open_next(row: int) -> _Output:
        first_us = int(micros[row]) if micros is not None else 0
        stamp = datetime.fromtimestamp(first_us // 10**6, tz=timezone.utc)
        name = f"part-{stamp:%Y%m%dT%H%M%S}-compact-{gid}-{len(outs) + 1:03d}.parquet"
        final = f"{directory}/{name}"
        target = f"{directory}/.{name}{TMP_SUFFIX}" if location.atomic_rename else final
        stream = fs.open_output_stream(target)
        writer = pq.ParquetWriter(
            stream, schema, compression="zstd", write_statistics=True, use_dictionary=True
        )
        out = _Output(name, final, target, stream, writer)
        outs.append(out)
        return out

    try:
        if data.num_rows == 0:
            out = open_next(0)
            out.writer.write_table(data.cast(schema.remove_metadata()))
        pos = 0
        while pos < data.num_rows:
            if not outs or outs[-1].stream.tell() >= target_bytes:
                open_next(pos)
            out = outs[-1]
            chunk = data.slice(pos, slice_rows)
            out.writer.write_table(chunk, row_group_size=slice_rows)
            out.rows += chunk.num_rows
            pos += chunk.num_rows
        group = json.dumps([o.name for o in outs])
        for out in outs:
            out.writer.add_key_value_metadata(
                {
                    REPLACES_KEY.decode(): json.dumps(sorted(replaces)),
                    GROUP_KEY.decode(): group,
                    KEEP_KEY.decode(): keep,
                }
            )
            out.writer.close()
            out.size = out.stream.tell()
            out.stream.close()
            if _STEP_HOOK is not None:
                _STEP_HOOK("written")
        for out in outs:
            if out.target != out.final:
                fs.move(out.target, out.final)
            if _STEP_HOOK is not None:
                _STEP_HOOK("renamed")
    except BaseException:
        for out in outs:
            with contextlib.suppress(Exception):  # already closed or broken
                out.writer.close()
                out.stream.close()
            # Only temporaries: renamed files are a (partial) group that readers
            # ignore while the inputs exist; the next run deletes them.
            if out.target != out.final:
                with contextlib.suppress(Exception):  # may not exist
                    fs.delete_file(out.target)
        raise
    return outs


def _slice_rows(target_bytes: int, bytes_in: int, rows_in: int) -> int:
    """Rows per row group: 64 Ki, fewer when the target holds few rows (finer splits)."""
    per_row = max(1.0, bytes_in / max(rows_in, 1) / 3)  # merged files are ~3x denser
    return int(min(ROW_GROUP_SIZE, max(256, target_bytes / per_row / 8)))


# -- compaction ------------------------------------------------------------------
def _open(archive: Archive | Location | str | os.PathLike[str]) -> Archive:
    if isinstance(archive, Archive):
        result = archive
    elif isinstance(archive, Location):
        result = Archive(archive.root, filesystem=archive.fs)
        result.uri = archive.uri
    else:
        result = Archive(archive)
    if not result.exists():
        raise NoArchiveError(f"no archive at {result.uri}; record one with `archiver record`")
    return result


def _tables(archive: Archive, tables: str | Iterable[str] | None) -> list[str]:
    known = archive.tables()
    if tables is None:
        return known
    names = [tables] if isinstance(tables, str) else list(tables)
    for name in names:
        if name not in known:
            raise ArchiverError(
                f"unknown table {name!r} in archive {archive.uri}: "
                f"tables are {', '.join(known) or 'none'}"
            )
    return names


def _plan(scan: _Scan, keep: Keep, target_bytes: int) -> list[pafs.FileInfo]:
    """The files of a partition to merge (empty: leave the partition alone)."""
    if keep == "latest":
        infos = [scan.infos.get(i.base_name) for i in scan.visible]
        groups = {info.group for info in infos if info is not None}
        done = all(i is not None and i.keep == "latest" for i in infos) and len(groups) <= 1
        return [] if done else list(scan.visible)
    small = [i for i in scan.visible if i.size < NEAR_TARGET * target_bytes]
    return small if len(small) > 1 else []


def _compact_partition(
    location: Location,
    partition: Partition,
    files: list[pafs.FileInfo],
    keep: Keep,
    target_bytes: int,
) -> tuple[PartitionCompaction, list[str]]:
    data, schema = _read(location, partition.table, [i.path for i in files])
    rows_in = data.num_rows
    if keep == "latest" and partition.table in ENTITY_KEYS:
        data = latest_rows(data, ENTITY_KEYS[partition.table])
    else:
        data = _sorted(data)
    bytes_in = sum(i.size for i in files)
    outs = _write_group(
        location,
        partition.path,
        data,
        schema,
        replaces=[i.base_name for i in files],
        keep=keep,
        target_bytes=target_bytes,
        slice_rows=_slice_rows(target_bytes, bytes_in, rows_in),
    )
    report = PartitionCompaction(
        partition.table,
        partition.date,
        partition.hour,
        files_in=len(files),
        files_out=len(outs),
        rows_in=rows_in,
        rows_out=data.num_rows,
        bytes_in=bytes_in,
        bytes_out=sum(o.size for o in outs),
    )
    return report, [i.path for i in files]


def _compact_locked(
    archive: Archive,
    tables: list[str],
    *,
    before_us: int,
    target_bytes: int,
    keep: Keep,
    dry_run: bool,
    progress: Progress | None,
) -> CompactionReport:
    started = time.perf_counter()
    location = archive.location
    wall = time.time()
    recovered = temps = 0
    results: list[PartitionCompaction] = []
    to_delete: list[str] = []
    work = [(t, p) for t in tables for p in archive.partitions(t)]
    closed = [(t, p) for t, p in work if p.start_us + HOUR_US <= before_us]
    done = 0
    try:
        for table in tables:
            if not dry_run:
                recovered += _remove_set_aside(location, table)
        for table, partition in work:
            scan = _scan(location, partition, wall)
            if not dry_run and (scan.leftovers or scan.temps):
                r, t = _finish(location, partition, scan)
                recovered, temps = recovered + r, temps + t
                scan = _scan(location, partition, wall)  # plan on what is left, not on the old list
            if partition.start_us + HOUR_US > before_us:
                continue
            files = _plan(scan, keep, target_bytes)
            if files and dry_run:
                rows = sum(_num_rows(location, i) for i in files)
                size = sum(i.size for i in files)
                estimate = max(1, math.ceil(size / target_bytes))
                results.append(
                    PartitionCompaction(
                        table, partition.date, partition.hour, len(files), estimate,
                        rows, rows, size, size,
                    )
                )  # fmt: skip
            elif files:
                result, inputs = _compact_partition(location, partition, files, keep, target_bytes)
                results.append(result)
                to_delete.extend(inputs)
            done += 1
            if progress is not None:
                progress(done, len(closed))
    finally:
        # Inputs go last and together: readers see at most one short window in
        # which a file they listed disappears (they then list again).
        for path in to_delete:
            _delete(location, path)
    return CompactionReport(
        tuple(results),
        seconds=time.perf_counter() - started,
        dry_run=dry_run,
        recovered=recovered,
        temps_removed=temps,
    )


def _num_rows(location: Location, info: pafs.FileInfo) -> int:
    with location.fs.open_input_file(info.path) as f:
        return pq.ParquetFile(f).metadata.num_rows


def compact(
    archive: Archive | Location | str | os.PathLike[str],
    *,
    tables: str | Iterable[str] | None = None,
    before: Any = None,
    target_file_bytes: int | str = DEFAULT_TARGET_FILE_BYTES,
    keep: Keep = "all",
    dry_run: bool = False,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    progress: Progress | None = None,
) -> CompactionReport:
    """Merge the small files of each closed partition into as few files as the target allows.

    Idempotent: a second run does nothing. Safe to run while a camera records and
    readers load (see the module docstring); a ``kill -9`` at any point loses and
    duplicates nothing, and the next run finishes the job.

    Args:
        archive: an :class:`~archiver.Archive`, a path or a URI.
        tables: the tables to compact (default: all).
        before: compact only the hours that ended by then (default: now); a time,
            epoch seconds, an ISO string, or a duration ago such as ``"2h"``.
        target_file_bytes: size of the merged files (an int or ``"128MiB"``); files
            of at least 3/4 of it are left alone.
        keep: ``"latest"`` also keeps only the last row of each task (uuid) and
            worker (hostname) per partition.
        dry_run: only report what would be merged (``files_out`` is a bound).
        lock_timeout: seconds to wait for another cleanup before raising
            :class:`~archiver.errors.LockedError`.
        progress: called as ``progress(done, total)`` after each closed partition.

    Returns:
        A :class:`CompactionReport`.

    Example:
        >>> archiver.Archive("data/archive").compact(before="1h")  # doctest: +SKIP
    """
    arch = _open(archive)
    names = _tables(arch, tables)
    keep = _check_keep(keep)
    target = parse_size(target_file_bytes)
    before_us = _micros(_now(before))
    run = _compact_locked
    kwargs = dict(
        before_us=before_us, target_bytes=target, keep=keep, dry_run=dry_run, progress=progress
    )
    if dry_run:
        return run(arch, names, **kwargs)
    with MaintenanceLock(arch.location, timeout=lock_timeout, purpose="compact"):
        return run(arch, names, **kwargs)


# -- expiry --------------------------------------------------------------------
def _expired_tasks(
    location: Location,
    partitions: list[Partition],
    scans: dict[Partition, _Scan],
    per_state: Mapping[str, pd.Timedelta],
    now: pd.Timestamp,
) -> tuple[set[str], list[StateExpiry], dict[str, int]]:
    """uuids whose last row is older than their state's retention; rows per visible file."""
    pieces = []
    paths: list[str] = []
    for partition in partitions:
        for info in scans[partition].visible:
            paths.append(info.path)
    if not paths:
        return set(), [], {}
    fmt = ds.ParquetFileFormat()
    for index, path in enumerate(paths):
        frag = fmt.make_fragment(path, filesystem=location.fs)
        cols = frag.to_table(columns=["uuid", "captured_at", "snapshot_id", "state"])
        state = cols.column("state")
        if pa.types.is_dictionary(state.type):
            state = state.cast(pa.string())
        pieces.append(
            pa.table(
                {
                    "uuid": cols.column("uuid"),
                    "captured_at": cols.column("captured_at").cast(pa.int64()),
                    "snapshot_id": cols.column("snapshot_id"),
                    "state": state,
                    "file": pa.array(np.full(cols.num_rows, index, np.int32)),
                }
            )
        )
    rows = pa.concat_tables(pieces).to_pandas()
    rows = rows.sort_values(["captured_at", "snapshot_id"], kind="stable")
    last = rows.drop_duplicates("uuid", keep="last")
    known = set(TASK_STATES) | set(last["state"].dropna())
    _check_states(per_state, known)
    limit_us = last["state"].map({s: d.value // 1000 for s, d in per_state.items()})
    age_us = _micros(now) - last["captured_at"]
    expired_last = last[age_us > limit_us.astype("float64")]
    expired = set(expired_last["uuid"])
    expired_rows = rows[rows["uuid"].isin(expired)]
    row_counts = expired_rows.groupby("uuid").size()
    states = []
    for state, group in expired_last.groupby("state"):
        states.append(
            StateExpiry(
                str(state),
                per_state[state],
                tasks=len(group),
                rows=int(row_counts.loc[group["uuid"]].sum()),
            )
        )
    per_file = expired_rows.groupby("file").size()
    return expired, states, {paths[int(i)]: int(n) for i, n in per_file.items()}


def _check_states(per_state: Mapping[str, Any], known: set[str]) -> None:
    for state in sorted(per_state):
        if state not in known:
            close = difflib.get_close_matches(state, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ArchiverError(
                f"unknown task state {state!r}{hint}: states are {', '.join(sorted(known))}"
            )


def _expire_partition_dir(location: Location, partition: Partition) -> None:
    """Drop a partition: rename it aside (invisible at once), then delete it."""
    fs = location.fs
    path = partition.path
    if location.atomic_rename:
        parent, name = path.rsplit("/", 1)
        aside = f"{parent}/.{name}{EXPIRED_MARK}{new_writer_id()}"
        fs.move(path, aside)
        path = aside
    fs.delete_dir(path)
    if _STEP_HOOK is not None:
        _STEP_HOOK("deleted")
    day = path.rsplit("/", 1)[0]
    if location.local:
        with contextlib.suppress(OSError):
            os.rmdir(day)  # only if empty: a recorder may be writing there


def _expire_locked(
    archive: Archive,
    tables: list[str],
    *,
    older_than: pd.Timedelta | None,
    per_state: Mapping[str, pd.Timedelta],
    now: pd.Timestamp,
    dry_run: bool,
    progress: Progress | None,
    target_bytes: int = DEFAULT_TARGET_FILE_BYTES,
) -> ExpiryReport:
    started = time.perf_counter()
    location = archive.location
    wall = time.time()
    if not dry_run:
        for table in tables:
            _remove_set_aside(location, table)
    cutoff = None if older_than is None else _micros(now - older_than)
    gone: list[PartitionExpiry] = []
    gone_parts: list[Partition] = []
    kept: dict[str, list[Partition]] = {}
    for table in tables:
        for partition in archive.partitions(table):
            if cutoff is not None and partition.start_us + HOUR_US <= cutoff:
                gone_parts.append(partition)
            else:
                kept.setdefault(table, []).append(partition)
    total = len(gone_parts)
    done = 0
    for partition in gone_parts:
        scan = _scan(location, partition, wall)
        gone.append(
            PartitionExpiry(
                partition.table,
                partition.date,
                partition.hour,
                files=len(scan.visible),
                rows=sum(_num_rows(location, i) for i in scan.visible),
                bytes=sum(i.size for i in scan.visible),
            )
        )
        if not dry_run:
            _expire_partition_dir(location, partition)
        done += 1
        if progress is not None:
            progress(done, total)

    uuids: set[str] = set()
    states: list[StateExpiry] = []
    rewritten = 0
    task_parts = kept.get("tasks", []) if per_state else []
    if per_state and not task_parts:
        _check_states(per_state, set(TASK_STATES))
    if task_parts:
        scans = {}
        for partition in task_parts:
            scan = _scan(location, partition, wall)
            if not dry_run and (scan.leftovers or scan.temps):
                _finish(location, partition, scan)
                scan = _scan(location, partition, wall)
            scans[partition] = scan
        uuids, states, per_file = _expired_tasks(location, task_parts, scans, per_state, now)
        affected = [p for p in task_parts if any(i.path in per_file for i in scans[p].visible)]
        total += len(affected)
        to_delete: list[str] = []
        try:
            # Oldest first: a task's last row, which decides its state, goes last.
            for partition in affected if not dry_run else []:
                files = [i for i in scans[partition].visible if i.path in per_file]
                data, schema = _read(location, "tasks", [i.path for i in files])
                keep_mask = pc.invert(pc.is_in(data.column("uuid"), pa.array(sorted(uuids))))
                data = _sorted(data.filter(keep_mask))
                infos = [scans[partition].infos.get(i.base_name) for i in files]
                latest = all(i is not None and i.keep == "latest" for i in infos)
                bytes_in = sum(i.size for i in files)
                _write_group(
                    location,
                    partition.path,
                    data,
                    schema,
                    replaces=[i.base_name for i in files],
                    keep="latest" if latest else "all",
                    target_bytes=target_bytes,
                    slice_rows=_slice_rows(target_bytes, bytes_in, len(data)),
                )
                to_delete.extend(i.path for i in files)
                rewritten += 1
                done += 1
                if progress is not None:
                    progress(done, total)
        finally:
            for path in to_delete:
                _delete(location, path)
        # The rewrites' inputs are gone: drop the tombstones of fully expired files.
        for partition in affected if not dry_run else []:
            scan = _scan(location, partition, wall)
            for name in scan.tombstones:
                _delete(location, f"{partition.path}/{name}")
    return ExpiryReport(
        now=now,
        dry_run=dry_run,
        partitions=tuple(gone),
        states=tuple(sorted(states, key=lambda s: s.state)),
        uuids=tuple(sorted(uuids)),
        rewritten=rewritten,
        seconds=time.perf_counter() - started,
    )


def expire(
    archive: Archive | Location | str | os.PathLike[str],
    *,
    older_than: Any = None,
    per_state: Mapping[str, Any] | Iterable[str] | None = None,
    now: Any = None,
    dry_run: bool = True,
    tables: str | Iterable[str] | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    progress: Progress | None = None,
) -> ExpiryReport:
    """Drop partitions older than ``older_than`` and tasks expired by state; a dry run by default.

    A task expires when its *last* row across the archive is older than the
    retention of that row's state; then all of its rows go, so a long-running
    task is never cut in half. States without a retention never expire by state.

    Args:
        archive: an :class:`~archiver.Archive`, a path or a URI.
        older_than: drop whole partitions (every table) whose hour ended longer
            ago than this, e.g. ``"30d"``.
        per_state: ``{"SUCCESS": "1d", "FAILURE": "7d", ...}`` (or ``["SUCCESS=1d"]``).
        now: the time ages are measured from (default: now).
        dry_run: only report what would go (the default).
        tables: the tables whose old partitions go (default: all).
        lock_timeout: seconds to wait for another cleanup (not taken in a dry run).
        progress: called as ``progress(done, total)`` after each partition.

    Returns:
        An :class:`ExpiryReport` (``dry_run`` tells whether anything was deleted).

    Example:
        >>> report = archiver.Archive("data/archive").expire(older_than="30d")  # doctest: +SKIP
        >>> report.partitions  # what would go  # doctest: +SKIP
    """
    arch = _open(archive)
    names = _tables(arch, tables)
    delta = None if older_than is None else parse_duration(older_than, what="older_than")
    states = parse_per_state(per_state)
    at = _now(now)
    kwargs = dict(older_than=delta, per_state=states, now=at, dry_run=dry_run, progress=progress)
    if dry_run:
        return _expire_locked(arch, names, **kwargs)
    with MaintenanceLock(arch.location, timeout=lock_timeout, purpose="expire"):
        return _expire_locked(arch, names, **kwargs)


# -- both ------------------------------------------------------------------------
def run_retention(
    archive: Archive | Location | str | os.PathLike[str],
    retention: Retention | Mapping[str, Any] | str | os.PathLike[str],
    *,
    now: Any = None,
    dry_run: bool = False,
    expire_dry_run: bool | None = None,
    lock_timeout: float = 0.0,
    progress: Progress | None = None,
) -> CleanupReport:
    """Expire, then compact, as ``retention`` says, under one lock.

    Used by :meth:`archiver.ParquetCamera.on_cleanup` (which logs the report) and
    ``archiver cleanup``. By default it does not wait for another cleanup: it
    raises :class:`~archiver.errors.LockedError` and the next period tries again.

    Args:
        archive: an :class:`~archiver.Archive`, a :class:`~archiver.storage.Location`,
            a path or a URI.
        retention: a :class:`Retention`, a mapping of its fields, or a retention file.
        now: the time ages are measured from, and the end of the closed hours.
        dry_run: report only, change nothing.
        expire_dry_run: report expiry only (default: ``dry_run``).
        lock_timeout: seconds to wait for another cleanup.
        progress: called as ``progress(done, total)`` after each partition.
    """
    started = time.perf_counter()
    policy = Retention.coerce(retention)
    arch = _open(archive)
    names = _tables(arch, policy.tables)
    at = _now(now)
    expire_dry = dry_run if expire_dry_run is None else expire_dry_run or dry_run
    lock = None
    if not dry_run:
        lock = MaintenanceLock(arch.location, timeout=lock_timeout, purpose="cleanup")
        lock.acquire()
    try:
        expiry = None
        if policy.older_than is not None or policy.per_state:
            expiry = _expire_locked(
                arch,
                names,
                older_than=policy.older_than,
                per_state=policy.per_state,
                now=at,
                dry_run=expire_dry,
                progress=progress,
                target_bytes=policy.target_file_bytes,
            )
        compaction = None
        if policy.compact:
            compaction = _compact_locked(
                arch,
                names,
                before_us=_micros(at),
                target_bytes=policy.target_file_bytes,
                keep=policy.keep,
                dry_run=dry_run,
                progress=progress,
            )
    finally:
        if lock is not None:
            lock.release()
    return CleanupReport(expiry, compaction, seconds=time.perf_counter() - started)


__all__ = [
    "CleanupReport",
    "CompactionReport",
    "ExpiryReport",
    "PartitionCompaction",
    "PartitionExpiry",
    "Retention",
    "StateExpiry",
    "compact",
    "expire",
    "latest_rows",
    "parse_duration",
    "parse_per_state",
    "parse_size",
    "run_retention",
]
