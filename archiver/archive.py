"""The archive on disk: which files are visible, and reading them.

Layout: ``<archive>/<table>/date=YYYY-MM-DD/hour=H/<file>.parquet``. A file is
visible unless its name starts with ``.`` or ``_`` (temporary and foreign files)
or a live compacted file in the same partition lists it in its ``archiver.replaces``
metadata (a compaction that crashed before deleting its inputs). A compacted file
is one of a group written together (``archiver.group``); it is live once the whole
group is present, or once none of the files it replaces is left. See
:mod:`archiver.cleanup` for the protocol and why it never shows a row twice.
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Literal

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import ArchiverError, DamagedArchiveWarning, DamagedFileError, NoArchiveError
from .schema import HOUR_US, PARTITION_SCHEMA, SCHEMAS, in_partition_range
from .storage import Location, resolve

REPLACES_KEY = b"archiver.replaces"
GROUP_KEY = b"archiver.group"
KEEP_KEY = b"archiver.keep"
COMPACT_MARK = "-compact-"
READ_RETRIES = 20
#: Quarantined files live under ``<archive>/_quarantine/<table>/...`` (hidden: ``_``).
QUARANTINE = "_quarantine"
#: What to do with a damaged file or folder: ``"warn"`` (skip it with a
#: :class:`~archiver.errors.DamagedArchiveWarning`), ``"raise"`` (a
#: :class:`~archiver.errors.DamagedFileError` naming it), or a callable
#: ``handler(path, reason)`` (maintenance and ``check`` collect them so).
OnBadFile = Literal["warn", "raise"] | Callable[[str, str], None]
#: Partition folder names: ASCII digits only (``int()`` also takes other scripts' digits).
_DATE = re.compile(r"date=([0-9]{4})-([0-9]{2})-([0-9]{2})", re.ASCII)
_HOUR = re.compile(r"hour=([0-9]{1,2})", re.ASCII)
_EPOCH = date(1970, 1, 1)
#: Reads verify Parquet page checksums where the writer stored them.
PARQUET = ds.ParquetFileFormat(
    default_fragment_scan_options=ds.ParquetFragmentScanOptions(page_checksum_verification=True)
)


@dataclass(frozen=True)
class Partition:
    """One ``date=/hour=`` directory of a table."""

    table: str
    date: str
    hour: int
    path: str

    @property
    def start_us(self) -> int:
        """Start of the partition's hour, in microseconds since the epoch (UTC)."""
        day = datetime.strptime(self.date, "%Y-%m-%d").replace(tzinfo=timezone.utc)
        return int(day.timestamp()) * 10**6 + self.hour * HOUR_US


def is_hidden(name: str) -> bool:
    """Names that pyarrow, DuckDB and Polars skip: temporary and foreign files."""
    return name.startswith((".", "_"))


def parse_date(name: str) -> str | None:
    """``YYYY-MM-DD`` of a ``date=YYYY-MM-DD`` folder name, None if not a valid date
    in :func:`~archiver.schema.in_partition_range` (1970-01-01 .. 2261-12-31)."""
    match = _DATE.fullmatch(name)
    if match is None:
        return None
    try:
        day = date(*map(int, match.groups()))
    except ValueError:
        return None
    if not in_partition_range((day - _EPOCH).days * 24 * HOUR_US):
        return None
    return name[5:]


def parse_hour(name: str) -> int | None:
    """``H`` of an ``hour=H`` folder name (0-23), None if not valid."""
    match = _HOUR.fullmatch(name)
    hour = None if match is None else int(match.group(1))
    return hour if hour is not None and hour < 24 else None


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (pyarrow's span several)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def schema_problem(table: str, schema: pa.Schema) -> str | None:
    """Why a file with ``schema`` cannot be read as part of ``table`` (None: it can)."""
    expected = SCHEMAS.get(table)
    if expected is None:  # a foreign table: only the time column matters
        i = schema.get_field_index("captured_at")
        if i >= 0 and not pa.types.is_timestamp(schema.field(i).type):
            return f"column captured_at is {schema.field(i).type}, not a timestamp"
        return None
    for field in expected:
        i = schema.get_field_index(field.name)
        if i < 0:
            if not field.nullable:
                return f"column {field.name} is missing"
        elif not _compatible(schema.field(i).type, field.type):
            return f"column {field.name} is {schema.field(i).type}, expected {field.type}"
    return None


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Whether a column of type ``actual`` reads as ``expected`` (a cast that makes sense)."""
    if pa.types.is_dictionary(actual):
        actual = actual.value_type
    if pa.types.is_dictionary(expected):
        expected = expected.value_type
    kinds = (
        lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
        pa.types.is_timestamp,
        pa.types.is_integer,
        pa.types.is_floating,
        pa.types.is_boolean,
    )
    for kind in kinds:
        if kind(expected):
            return bool(kind(actual))
    if pa.types.is_list(expected) or pa.types.is_large_list(expected):
        return (pa.types.is_list(actual) or pa.types.is_large_list(actual)) and _compatible(
            actual.value_type, expected.value_type
        )
    return actual == expected


@dataclass(frozen=True)
class CompactInfo:
    """What a compacted file's metadata says: the files it replaces and its group."""

    replaces: frozenset[str]
    group: frozenset[str]
    rows: int
    keep: str = "all"


@dataclass(frozen=True)
class FileFacts:
    """What a data file's footer says: rows, compaction metadata, or why it is bad."""

    rows: int = 0
    compact: CompactInfo | None = None
    problem: str | None = None
    #: ``captured_at`` bounds (µs) from the row-group statistics, and the schema version.
    first_us: int | None = None
    last_us: int | None = None
    version: str | None = None


_FACTS: dict[tuple[str, str, int | None, int | None], FileFacts] = {}


def _key(location: Location, info: pafs.FileInfo) -> tuple[str, str, int | None, int | None]:
    return (location.uri, info.path, info.size, info.mtime_ns)


def file_facts(location: Location, info: pafs.FileInfo, table: str) -> FileFacts:
    """The footer facts of one data file (cached by path, size and mtime).

    A file that cannot be opened as Parquet, whose footer or compaction metadata is
    damaged, or whose schema does not fit ``table`` gets a ``problem``. A file that
    vanished raises FileNotFoundError (a concurrent cleanup: list again).
    """
    key = _key(location, info)
    cached = _FACTS.get(key)
    if cached is not None:
        return cached
    try:
        with location.fs.open_input_file(info.path) as f:
            meta = pq.ParquetFile(f).metadata
        problem = schema_problem(table, meta.schema.to_arrow_schema())
        if problem is not None:
            facts = FileFacts(problem=problem)
        else:
            compact = (
                _compact_info(meta, info.base_name) if COMPACT_MARK in info.base_name else None
            )
            version = (meta.metadata or {}).get(b"archiver.schema_version")
            facts = FileFacts(
                meta.num_rows,
                compact,
                None,
                *_time_bounds(meta),
                None if version is None else version.decode(errors="replace"),
            )
    except (OSError, pa.ArrowException, ValueError, TypeError) as exc:
        if _is_missing_file(exc):
            raise FileNotFoundError(info.path) from exc
        facts = FileFacts(problem=one_line(exc))
    remember(location, info, facts)
    return facts


def remember(location: Location, info: pafs.FileInfo, facts: FileFacts) -> None:
    """Cache ``facts`` (e.g. a problem found while reading pages) for ``info``."""
    if len(_FACTS) >= 65536:
        _FACTS.clear()
    _FACTS[_key(location, info)] = facts


def _time_bounds(meta: pq.FileMetaData) -> tuple[int | None, int | None]:
    """Min and max ``captured_at`` (µs) from the row-group statistics, which are in the
    file's own unit (pandas and Spark write nanoseconds)."""
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    arrow = meta.schema.to_arrow_schema()
    if "captured_at" not in names or arrow.get_field_index("captured_at") < 0:
        return None, None
    kind = arrow.field("captured_at").type
    if not pa.types.is_timestamp(kind):
        return None, None
    scale = {"s": 10**6, "ms": 1000, "us": 1, "ns": 1}[kind.unit]
    divide = 1000 if kind.unit == "ns" else 1
    col = names.index("captured_at")
    lo = hi = None
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(col).statistics
        if stats is None or not stats.has_min_max:
            continue
        low, high = stats.min_raw, stats.max_raw
        if not (isinstance(low, int) and isinstance(high, int)):  # INT96: no usable order
            continue
        low, high = low * scale // divide, high * scale // divide
        lo = low if lo is None else min(lo, low)
        hi = high if hi is None else max(hi, high)
    return lo, hi


def read_fully(fs: pafs.FileSystem, path: str) -> int:
    """Rows of ``path``, after decoding every page (checksums verified where present);
    raises (OSError, ArrowException, ValueError) if any part is damaged."""
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f, page_checksum_verification=True)
        rows = 0
        for i in range(parquet.num_row_groups):  # one row group at a time: bounded memory
            rows += parquet.read_row_group(i).num_rows
        if rows != parquet.metadata.num_rows:
            raise ValueError(f"{rows} rows read, the footer says {parquet.metadata.num_rows}")
        return rows


def mark_damaged(location: Location, path: str, exc: BaseException) -> str:
    """Remember that reading ``path`` failed with ``exc`` (later listings skip it); the reason."""
    reason = one_line(exc)
    try:
        info = location.fs.get_file_info(path)
    except OSError:
        return reason
    if info.type == pafs.FileType.File:  # (a merged file's footer still says what it merged)
        known = _FACTS.get(_key(location, info))
        remember(location, info, FileFacts(problem=reason, compact=known and known.compact))
    return reason


def _compact_info(meta: pq.FileMetaData, name: str) -> CompactInfo:
    kv = meta.metadata or {}
    replaces = json.loads(kv[REPLACES_KEY]) if REPLACES_KEY in kv else []
    group = json.loads(kv[GROUP_KEY]) if GROUP_KEY in kv else [name]
    keep = kv.get(KEEP_KEY, b"all").decode()
    if not all(isinstance(n, str) for n in [*replaces, *group]):
        raise ValueError("archiver.replaces/archiver.group metadata is not a list of names")
    return CompactInfo(frozenset(replaces), frozenset(group), meta.num_rows, keep)


def all_facts(location: Location, infos: list[pafs.FileInfo], table: str) -> list[FileFacts | None]:
    """:func:`file_facts` of each file, footers read in parallel; None for a vanished file."""

    def one(info: pafs.FileInfo) -> FileFacts | None:
        try:
            return file_facts(location, info, table)
        except FileNotFoundError:
            return None

    if len(infos) < 2 or all(_key(location, i) in _FACTS for i in infos):
        return [one(i) for i in infos]
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, infos))


def live_compacted(present: set[str], infos: dict[str, CompactInfo]) -> set[str]:
    """The compacted files among ``present`` whose ``replaces`` take effect.

    A group is renamed into place one file at a time, after which its inputs are
    deleted: a group with a member missing while one of its inputs is still here
    is a half-committed compaction (its rows are all still in the inputs), so it
    is ignored. A member missing once every input is gone was itself compacted
    later, and the rest of the group stays valid.
    """
    return {
        name
        for name, info in infos.items()
        if info.group <= present or not (info.replaces & present)
    }


def visible_names(present: set[str], infos: dict[str, CompactInfo]) -> set[str]:
    """Which of the ``present`` data files a reader should read (see :func:`live_compacted`)."""
    live = live_compacted(present, infos)
    replaced: set[str] = set()
    for name in live:
        replaced |= infos[name].replaces
    return {n for n in present if n not in replaced and (n not in infos or n in live)}


class Archive:
    """An archive written by :class:`archiver.ParquetCamera`.

    Args:
        path_or_uri: a local path or a URI (``file://``, ``s3://``, ``memory://``...).
        filesystem: an explicit ``pyarrow.fs.FileSystem`` (then the path is on it).
        on_bad_file: what readers do with a damaged file or folder (see :data:`OnBadFile`):
            ``"warn"`` (default: skip it with a warning naming it), ``"raise"``, or a
            callable ``handler(path, reason)``.
    """

    def __init__(
        self,
        path_or_uri: str | os.PathLike[str],
        *,
        filesystem: pafs.FileSystem | None = None,
        on_bad_file: OnBadFile = "warn",
    ) -> None:
        self.location = resolve(path_or_uri, filesystem)
        self.uri = self.location.uri
        self.on_bad_file = _check_on_bad_file(on_bad_file)

    def __repr__(self) -> str:
        return f"Archive({self.uri!r})"

    def using(self, on_bad_file: OnBadFile | None) -> Archive:
        """This archive with another ``on_bad_file`` handler (itself if None)."""
        if on_bad_file is None or on_bad_file is self.on_bad_file:
            return self
        other = object.__new__(Archive)
        other.__dict__.update(self.__dict__)
        other.on_bad_file = _check_on_bad_file(on_bad_file)
        return other

    def damaged(self, path: str, reason: str) -> None:
        """Report a damaged file or folder to the ``on_bad_file`` handler."""
        handler = self.on_bad_file
        if handler == "raise":
            raise DamagedFileError(f"damaged {path}: {reason} (see `archiver check`)")
        if handler == "warn":
            warnings.warn(
                f"skipped {path}: {reason} (see `archiver check`)",
                DamagedArchiveWarning,
                stacklevel=3,
            )
        else:
            handler(path, reason)

    def mark_bad(self, path: str, exc: BaseException) -> None:
        """Remember that reading ``path`` failed with ``exc`` and report it."""
        self.damaged(path, mark_damaged(self.location, path, exc))

    @property
    def fs(self) -> pafs.FileSystem:
        return self.location.fs

    def exists(self) -> bool:
        return self.fs.get_file_info(self.location.root).type == pafs.FileType.Directory

    # -- listing ------------------------------------------------------------
    def tables(self) -> list[str]:
        """Names of the tables present (directories not starting with ``_`` or ``.``)."""
        if not self.exists():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.location.root))
        names = [i.base_name for i in infos if i.type == pafs.FileType.Directory]
        return sorted(n for n in names if not is_hidden(n))

    def _check_table(self, table: str) -> None:
        if table not in self.tables():
            known = ", ".join(self.tables()) or "none"
            raise NoArchiveError(
                f"no table {table!r} in archive {self.uri} (tables: {known}); "
                "record one with `archiver record`"
            )

    def partitions(self, table: str) -> list[Partition]:
        """The table's ``date=/hour=`` partitions, oldest first.

        Hidden entries (``.``/``_``) are ignored; any other entry that is not a valid
        ``date=YYYY-MM-DD/hour=H`` folder is reported as damaged and skipped.
        """
        self._check_table(table)
        root = self.location.join(table)
        out = []
        for day in self._listing(root):
            if is_hidden(day.base_name):
                continue
            date_ = parse_date(day.base_name)
            if day.type != pafs.FileType.Directory or date_ is None:
                layout = "date=YYYY-MM-DD, 1970-2261"
                self.damaged(day.path, _not_a_partition(day, layout))
                continue
            for hour in self._listing(day.path):
                if is_hidden(hour.base_name):
                    continue
                h = parse_hour(hour.base_name)
                if hour.type != pafs.FileType.Directory or h is None:
                    self.damaged(hour.path, _not_a_partition(hour, "hour=H (0-23)"))
                    continue
                out.append(Partition(table, date_, h, hour.path))
        return sorted(out, key=lambda p: (p.date, p.hour))

    def _listing(self, path: str) -> list[pafs.FileInfo]:
        try:
            return self.fs.get_file_info(pafs.FileSelector(path))
        except FileNotFoundError:  # removed by a concurrent expiry
            return []

    def partition_files(self, partition: Partition) -> list[pafs.FileInfo]:
        """Visible Parquet files of one partition (replaced, hidden and damaged excluded)."""
        files = []
        for info in self._listing(partition.path):
            name = info.base_name
            if is_hidden(name) or not name.endswith(".parquet"):
                continue
            if info.type != pafs.FileType.File:
                self.damaged(info.path, "not a file")
            else:
                files.append(info)
        compacted = [i for i in files if COMPACT_MARK in i.base_name]
        infos: dict[str, CompactInfo] = {}
        gone: set[str] = set()
        for info, facts in zip(compacted, all_facts(self.location, compacted, partition.table)):
            if facts is None:  # removed by a concurrent cleanup
                gone.add(info.base_name)
            elif facts.problem is not None:  # a damaged one replaces nothing
                self.damaged(info.path, facts.problem)
                gone.add(info.base_name)
            else:
                infos[info.base_name] = facts.compact
        visible = visible_names({i.base_name for i in files} - gone, infos)
        candidates = [i for i in files if i.base_name in visible]
        plain = [i for i in candidates if i.base_name not in infos]
        for info, facts in zip(plain, all_facts(self.location, plain, partition.table)):
            if facts is None:
                visible.discard(info.base_name)
            elif facts.problem is not None:
                self.damaged(info.path, facts.problem)
                visible.discard(info.base_name)
        return sorted((i for i in files if i.base_name in visible), key=lambda i: i.base_name)

    def files(
        self,
        table: str,
        partitions: list[Partition] | None = None,
        *,
        on_bad_file: OnBadFile | None = None,
    ) -> list[str]:
        """Paths of the table's readable visible data files, oldest partition first."""
        arch = self.using(on_bad_file)
        parts = arch.partitions(table) if partitions is None else partitions
        if len(parts) < 2:
            return [i.path for p in parts for i in arch.partition_files(p)]
        with ThreadPoolExecutor(max_workers=8) as pool:  # footers are read in parallel
            return [i.path for files in pool.map(arch.partition_files, parts) for i in files]

    def check(self, *, quarantine: bool = False, **kwargs: Any):
        """Read every file fully and report damage; see :func:`archiver.check.check`."""
        from .check import check

        return check(self, quarantine=quarantine, **kwargs)

    # -- maintenance (see archiver.cleanup) ---------------------------------
    def compact(
        self,
        *,
        tables: str | list[str] | None = None,
        before: Any = None,
        target_file_bytes: int | str = 128 * 1024 * 1024,
        keep: str = "all",
        **kwargs: Any,
    ):
        """Merge the small files of closed hours; see :func:`archiver.cleanup.compact`."""
        from .cleanup import compact

        return compact(
            self,
            tables=tables,
            before=before,
            target_file_bytes=target_file_bytes,
            keep=keep,
            **kwargs,
        )

    def expire(
        self,
        *,
        older_than: Any = None,
        per_state: Any = None,
        now: Any = None,
        dry_run: bool = True,
        **kwargs: Any,
    ):
        """Drop old hours and expired tasks (dry run by default); see :func:`.cleanup.expire`."""
        from .cleanup import expire

        return expire(
            self, older_than=older_than, per_state=per_state, now=now, dry_run=dry_run, **kwargs
        )

    # -- reading ------------------------------------------------------------
    def schema(self, table: str) -> pa.Schema:
        """The table's schema (archiver's own for its tables, else the newest file's)."""
        if table in SCHEMAS:
            return SCHEMAS[table]
        for path in reversed(self.files(table)):
            try:
                with self.fs.open_input_file(path) as f:
                    return pq.read_schema(f).remove_metadata()
            except (OSError, pa.ArrowException) as exc:
                if _is_missing_file(exc):
                    continue
                self.mark_bad(path, exc)
        raise NoArchiveError(f"table {table!r} in {self.uri} has no readable files")

    def dataset(
        self,
        table: str,
        partitions: list[Partition] | None = None,
        *,
        on_bad_file: OnBadFile | None = None,
    ) -> ds.Dataset:
        """A ``pyarrow.dataset`` over the readable visible files, with ``date``/``hour``.

        Reading it verifies Parquet page checksums.
        """
        arch = self.using(on_bad_file)
        return arch._dataset(table, arch.files(table, partitions))

    def _dataset(self, table: str, paths: list[str]) -> ds.Dataset:
        schema = self.schema(table)
        full = pa.schema(list(schema) + list(PARTITION_SCHEMA))
        return ds.dataset(
            paths,
            schema=full,
            format=PARQUET,
            filesystem=self.fs,
            partitioning=ds.partitioning(PARTITION_SCHEMA, flavor="hive"),
            partition_base_dir=self.location.join(table),
        )

    def read(
        self,
        table: str,
        *,
        partitions: list[Partition] | None = None,
        columns: list[str] | None = None,
        filter: ds.Expression | None = None,
        limit: int | None = None,
        on_bad_file: OnBadFile | None = None,
    ) -> pa.Table:
        """Read as an Arrow table; retried when a concurrent cleanup swaps files mid-read.

        ``limit`` returns only the first rows (in file order) and stops reading there.
        A file that fails while its pages are read is reported (``on_bad_file``) and
        the others are read one by one.
        """
        arch = self.using(on_bad_file)
        for attempt in range(READ_RETRIES):
            try:
                paths = arch.files(table, partitions)
                dataset = arch._dataset(table, paths)
                try:
                    if limit is not None:
                        return dataset.head(limit, columns=columns, filter=filter)
                    return dataset.to_table(columns=columns, filter=filter)
                except (pa.ArrowException, OSError) as exc:
                    if _is_missing_file(exc) or not _filter_works(dataset, columns, filter):
                        raise
                result = arch._read_each(table, paths, partitions, columns, filter)
                return result if limit is None else result.slice(0, limit)
            except (FileNotFoundError, OSError) as exc:
                if attempt == READ_RETRIES - 1 or not _is_missing_file(exc):
                    raise
                time.sleep(0.01 * (attempt + 1))
                partitions = None if partitions is None else arch._refresh(table, partitions)
        raise AssertionError("unreachable")

    def _read_each(
        self,
        table: str,
        paths: list[str],
        partitions: list[Partition] | None,
        columns: list[str] | None,
        filter: Any,
    ) -> pa.Table:
        """Read file by file, reporting and skipping the ones that fail.

        A compacted file that fails replaces nothing: the files are listed again (its
        inputs are visible now, its group's other files not) and read instead.
        """
        done: dict[str, pa.Table] = {}
        while True:
            merged_failed = False
            for path in paths:
                if path in done:
                    continue
                try:
                    done[path] = self._dataset(table, [path]).to_table(
                        columns=columns, filter=filter
                    )
                except (pa.ArrowException, OSError) as exc:
                    if _is_missing_file(exc):
                        raise
                    self.mark_bad(path, exc)  # remembered: the next listing skips it
                    merged_failed |= COMPACT_MARK in path.rsplit("/", 1)[-1]
            if not merged_failed:
                break
            paths = self.files(table, partitions)
        pieces = [done[p] for p in paths if p in done]
        if pieces:
            return pa.concat_tables(pieces)
        return self._dataset(table, []).to_table(columns=columns, filter=filter)

    def _refresh(self, table: str, partitions: list[Partition]) -> list[Partition]:
        keep = {(p.date, p.hour) for p in partitions}
        return [p for p in self.partitions(table) if (p.date, p.hour) in keep]

    def load(
        self,
        table: str = "tasks",
        *,
        start=None,
        end=None,
        columns=None,
        filters=None,
        engine="pandas",
        **kwargs,
    ):
        """Every row of ``table`` captured in ``[start, end)``, as a DataFrame.

        Args:
            table: ``"tasks"``, ``"workers"`` or ``"snapshots"``.
            start, end: datetimes (naive = UTC), ISO strings, epoch seconds, or
                durations ago such as ``"2h"``/``"7d"``. Partitions outside the range
                are never opened; row-group statistics prune inside files.
            columns: the columns to read (default: the table's, without the ``date``
                and ``hour`` partition columns, which can be asked for by name).
            filters: a pyarrow expression or ``pandas.read_parquet``'s list of tuples,
                e.g. ``[("name", "==", "tasks.add"), ("state", "in", ["FAILURE"])]``.
            engine: ``"pandas"`` (default), ``"arrow"`` (a ``pyarrow.Table``) or
                ``"dask"`` (a lazy dask DataFrame, one partition per hour).
            limit: only the first ``limit`` rows (oldest first).
            on_bad_file: ``"warn"`` (skip a damaged file or folder with a warning naming
                it), ``"raise"`` or a callable ``(path, reason)``; default: the archive's.

        Timestamps are tz-aware UTC, ``name``/``state``/``worker`` categorical and
        integers nullable; files written by an older schema load with missing columns null.
        """
        from .query import load_table

        return load_table(
            self,
            table,
            start=start,
            end=end,
            columns=columns,
            filters=filters,
            engine=engine,
            **kwargs,
        )

    def latest(self, table: str = "tasks", *, as_of=None, **kwargs):
        """The last row of each task (by uuid) or worker (by hostname) as of ``as_of``.

        The cluster as it was at ``as_of`` (inclusive; default: the newest snapshot).
        Also takes ``start`` (ignore entities not recorded since then), ``columns``,
        ``filters`` (applied to the latest rows, so ``state == "FAILURE"`` means "tasks
        whose last known state is FAILURE"), ``engine`` (``"pandas"``/``"arrow"``),
        ``limit`` and ``on_bad_file`` (as :meth:`load`). Rows are ordered by the time
        of their last version.
        """
        from .query import latest

        return latest(self, table, as_of=as_of, **kwargs)

    def history(self, uuid: str, **kwargs):
        """Every recorded version of one task, oldest first.

        Also takes ``start``/``end``/``columns``/``engine``/``on_bad_file`` and ``table="workers"``
        (then ``uuid`` is a hostname).
        """
        from .query import history

        return history(self, uuid, **kwargs)


def _check_on_bad_file(value: Any) -> OnBadFile:
    if value in ("warn", "raise") or callable(value):
        return value
    raise ArchiverError(f"invalid on_bad_file {value!r}: use 'warn', 'raise' or a callable")


def _not_a_partition(info: pafs.FileInfo, layout: str) -> str:
    if info.type == pafs.FileType.Directory:
        return f"not a partition folder ({layout})"
    return f"a file where a partition folder ({layout}) belongs"


def _filter_works(dataset: ds.Dataset, columns: list[str] | None, filter: Any) -> bool:
    """Whether ``columns``/``filter`` apply to the schema (else the error is the caller's)."""
    try:
        dataset.schema.empty_table().filter(filter if filter is not None else ds.scalar(True))
        if columns is not None:
            dataset.schema.empty_table().select(columns)
    except (pa.ArrowException, KeyError, TypeError, ValueError):
        return False
    return True


def _is_missing_file(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    text = str(exc)
    if "magic bytes" in text:  # "Parquet magic bytes not found": a damaged file
        return False
    return "No such file" in text or "not found" in text.lower() or "does not exist" in text
