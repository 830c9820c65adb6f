"""The archive on disk: which files are visible, and reading them.

Layout: ``<archive>/<table>/date=YYYY-MM-DD/hour=H/<file>.parquet``. A file is
visible unless its name starts with ``.`` or ``_`` (temporary and foreign files)
or a compacted file in the same partition lists it in its ``archiver.replaces``
metadata (a compaction that crashed before deleting its inputs).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import NoArchiveError
from .schema import PARTITION_SCHEMA, SCHEMAS
from .storage import Location, resolve

REPLACES_KEY = b"archiver.replaces"
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
        return int(day.timestamp()) * 10**6 + self.hour * 3_600_000_000


def is_hidden(name: str) -> bool:
    """Names that pyarrow, DuckDB and Polars skip: temporary and foreign files."""
    return name.startswith((".", "_"))


def replaced_by(location: Location, path: str) -> list[str]:
    """Basenames that the compacted file at ``path`` replaces."""
    with location.fs.open_input_file(path) as f:
        metadata = pq.read_schema(f).metadata or {}
    raw = metadata.get(REPLACES_KEY)
    return json.loads(raw) if raw else []


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
        replaced: set[str] = set()
        for info in files:
            if COMPACT_MARK in info.base_name:
                try:
                    replaced.update(replaced_by(self.location, info.path))
                except FileNotFoundError:  # removed by a concurrent cleanup
                    continue
        return sorted(
            (i for i in files if i.base_name not in replaced), key=lambda i: i.base_name
        )

    def files(self, table: str, partitions: list[Partition] | None = None) -> list[str]:
        """Paths of the table's visible data files, oldest partition first."""
        parts = self.partitions(table) if partitions is None else partitions
        return [i.path for p in parts for i in self.partition_files(p)]

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
    ) -> pa.Table:
        """Read as an Arrow table; retried when a concurrent cleanup swaps files mid-read."""
        for attempt in range(READ_RETRIES):
            try:
                return self.dataset(table, partitions).to_table(columns=columns, filter=filter)
            except (FileNotFoundError, OSError) as exc:
                if attempt == READ_RETRIES - 1 or not _is_missing_file(exc):
                    raise
                time.sleep(0.01 * (attempt + 1))
                partitions = None if partitions is None else self._refresh(table, partitions)
        raise AssertionError("unreachable")

    def _refresh(self, table: str, partitions: list[Partition]) -> list[Partition]:
        keep = {(p.date, p.hour) for p in partitions}
        return [p for p in self.partitions(table) if (p.date, p.hour) in keep]

    def load(self, table: str = "tasks", **kwargs):
        """Every row of ``table`` as a pandas DataFrame (see :mod:`archiver.query`)."""
        from .query import load_table

        return load_table(self, table, **kwargs)

    def latest(self, table: str = "tasks", *, as_of=None, **kwargs):
        """The last row of each task (by uuid) or worker (by hostname) as of ``as_of``."""
        from .query import latest

        return latest(self, table, as_of=as_of, **kwargs)

    def history(self, uuid: str, **kwargs):
        """Every recorded version of one task, oldest first."""
        from .query import history

        return history(self, uuid, **kwargs)


def _is_missing_file(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    text = str(exc)
    return "No such file" in text or "not found" in text.lower() or "does not exist" in text
