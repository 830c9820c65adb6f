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
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import NoArchiveError
from .schema import HOUR_US, PARTITION_SCHEMA, SCHEMAS
from .storage import Location, resolve

REPLACES_KEY = b"archiver.replaces"
GROUP_KEY = b"archiver.group"
KEEP_KEY = b"archiver.keep"
COMPACT_MARK = "-compact-"
READ_RETRIES = 20


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


@dataclass(frozen=True)
class CompactInfo:
    """What a compacted file's metadata says: the files it replaces and its group."""

    replaces: frozenset[str]
    group: frozenset[str]
    rows: int
    keep: str = "all"


_INFO_CACHE: dict[tuple[str, str, int, int | None], CompactInfo] = {}


def compact_info(location: Location, info: pafs.FileInfo) -> CompactInfo:
    """The :class:`CompactInfo` of a compacted file (cached: these files never change)."""
    key = (location.uri, info.path, info.size, info.mtime_ns)
    cached = _INFO_CACHE.get(key)
    if cached is not None:
        return cached
    with location.fs.open_input_file(info.path) as f:
        meta = pq.ParquetFile(f).metadata
    kv = meta.metadata or {}
    replaces = json.loads(kv[REPLACES_KEY]) if REPLACES_KEY in kv else []
    group = json.loads(kv[GROUP_KEY]) if GROUP_KEY in kv else [info.base_name]
    keep = kv.get(KEEP_KEY, b"all").decode()
    result = CompactInfo(frozenset(replaces), frozenset(group), meta.num_rows, keep)
    if len(_INFO_CACHE) >= 4096:
        _INFO_CACHE.clear()
    _INFO_CACHE[key] = result
    return result


def replaced_by(location: Location, path: str) -> list[str]:
    """Basenames that the compacted file at ``path`` replaces."""
    return sorted(compact_info(location, location.fs.get_file_info(path)).replaces)


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
    """

    def __init__(
        self, path_or_uri: str | os.PathLike[str], *, filesystem: pafs.FileSystem | None = None
    ) -> None:
        self.location = resolve(path_or_uri, filesystem)
        self.uri = self.location.uri

    def __repr__(self) -> str:
        return f"Archive({self.uri!r})"

    @property
    def fs(self) -> pafs.FileSystem:
        return self.location.fs

    def exists(self) -> bool:
        return self.fs.get_file_info(self.location.root).type == pafs.FileType.Directory

    # -- listing ------------------------------------------------------------
    def tables(self) -> list[str]:
        """Names of the tables present (directories holding Parquet files)."""
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
        """The table's ``date=/hour=`` partitions, oldest first."""
        self._check_table(table)
        root = self.location.join(table)
        out = []
        for day in self.fs.get_file_info(pafs.FileSelector(root)):
            if day.type != pafs.FileType.Directory or not day.base_name.startswith("date="):
                continue
            for hour in self.fs.get_file_info(pafs.FileSelector(day.path)):
                name = hour.base_name
                if hour.type == pafs.FileType.Directory and name.startswith("hour="):
                    try:
                        h = int(name[5:])
                    except ValueError:
                        continue
                    out.append(Partition(table, day.base_name[5:], h, hour.path))
        return sorted(out, key=lambda p: (p.date, p.hour))

    def partition_files(self, partition: Partition) -> list[pafs.FileInfo]:
        """Visible Parquet files of one partition (replaced and hidden files excluded)."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(partition.path))
        except FileNotFoundError:
            return []
        files = [
            i
            for i in infos
            if i.type == pafs.FileType.File
            and not is_hidden(i.base_name)
            and i.base_name.endswith(".parquet")
        ]
        infos: dict[str, CompactInfo] = {}
        for info in files:
            if COMPACT_MARK in info.base_name:
                try:
                    infos[info.base_name] = compact_info(self.location, info)
                except FileNotFoundError:  # removed by a concurrent cleanup
                    continue
        visible = visible_names({i.base_name for i in files}, infos)
        return sorted((i for i in files if i.base_name in visible), key=lambda i: i.base_name)

    def files(self, table: str, partitions: list[Partition] | None = None) -> list[str]:
        """Paths of the table's visible data files, oldest partition first."""
        parts = self.partitions(table) if partitions is None else partitions
        return [i.path for p in parts for i in self.partition_files(p)]

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
        files = self.files(table)
        if not files:
            raise NoArchiveError(f"table {table!r} in {self.uri} has no files")
        with self.fs.open_input_file(files[-1]) as f:
            return pq.read_schema(f).remove_metadata()

    def dataset(self, table: str, partitions: list[Partition] | None = None) -> ds.Dataset:
        """A ``pyarrow.dataset`` over the visible files, with ``date``/``hour`` columns."""
        schema = self.schema(table)
        full = pa.schema(list(schema) + list(PARTITION_SCHEMA))
        return ds.dataset(
            self.files(table, partitions),
            schema=full,
            format="parquet",
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
    ) -> pa.Table:
        """Read as an Arrow table; retried when a concurrent cleanup swaps files mid-read.

        ``limit`` returns only the first rows (in file order) and stops reading there.
        """
        for attempt in range(READ_RETRIES):
            try:
                dataset = self.dataset(table, partitions)
                if limit is not None:
                    return dataset.head(limit, columns=columns, filter=filter)
                return dataset.to_table(columns=columns, filter=filter)
            except (FileNotFoundError, OSError) as exc:
                if attempt == READ_RETRIES - 1 or not _is_missing_file(exc):
                    raise
                time.sleep(0.01 * (attempt + 1))
                partitions = None if partitions is None else self._refresh(table, partitions)
        raise AssertionError("unreachable")

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
        whose last known state is FAILURE"), ``engine`` (``"pandas"``/``"arrow"``) and
        ``limit``. Rows are ordered by the time of their last version.
        """
        from .query import latest

        return latest(self, table, as_of=as_of, **kwargs)

    def history(self, uuid: str, **kwargs):
        """Every recorded version of one task, oldest first.

        Also takes ``start``/``end``/``columns``/``engine`` and ``table="workers"``
        (then ``uuid`` is a hostname).
        """
        from .query import history

        return history(self, uuid, **kwargs)


def _is_missing_file(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    text = str(exc)
    return "No such file" in text or "not found" in text.lower() or "does not exist" in text
