"""The read handle of an archive: its tables, partitions, visible files, and reading them.

What is visible is decided by :mod:`archiver.layout` (the rules) and
:mod:`archiver.listing` (the listing); loading with time ranges and filters is
:mod:`archiver.query`, maintenance :mod:`archiver.maintenance`, and the convenient
object API (``archiver.Archive(...).load()``) is composed on top in :mod:`archiver.api`.
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, cast
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .archive_path import check_archive_path
from .errors import (
    ArchiverError,
    DamagedArchiveWarning,
    DamagedFileError,
    NoArchiveError,
    missing_extra,
    one_line,
)
from .layout import COMPACT_MARK, Partition, is_hidden
from .listing import (
    PARQUET,
    READ_RETRIES,
    is_missing_file,
    list_dir,
    mark_damaged,
    retrying,
    scan_partition,
    walk_partitions,
)
from .schema import PARTITION_SCHEMA, SCHEMAS
from .storage import Location, resolve

#: What to do with a damaged file or folder: ``"warn"`` (skip it with a
#: :class:`~archiver.errors.DamagedArchiveWarning`), ``"raise"`` (a
#: :class:`~archiver.errors.DamagedFileError` naming it), or a callable
#: ``handler(path, reason)`` (maintenance and ``check`` collect them so).
OnBadFile = Literal["warn", "raise"] | Callable[[str, str], None]


class Archive:
    """An archive written by :class:`archiver.ParquetCamera`, for reading.

    Args:
        path_or_uri: a local path or a URI (``file://``, ``s3://``, ``memory://``...).
        filesystem: an explicit ``pyarrow.fs.FileSystem`` (then the path is on it).
        storage_options: options of the fsspec filesystem (e.g. s3fs's ``key``,
            ``secret``, ``client_kwargs={"endpoint_url": ...}``), instead of ``filesystem``.
        on_bad_file: what readers do with a damaged file or folder (see :data:`OnBadFile`):
            ``"warn"`` (default: skip it with a warning naming it), ``"raise"``, or a
            callable ``handler(path, reason)``.
    """

    def __init__(
        self,
        path_or_uri: str | os.PathLike[str],
        *,
        filesystem: pafs.FileSystem | None = None,
        storage_options: Mapping[str, Any] | None = None,
        on_bad_file: OnBadFile = "warn",
    ) -> None:
        self.location = resolve(path_or_uri, filesystem, storage_options)
        self.uri = self.location.uri
        self.on_bad_file = _check_on_bad_file(on_bad_file)
        self._checked = False

    @classmethod
    def at(cls, location: Location) -> Archive:
        """The archive at an already resolved ``location``."""
        archive = cls(location.root, filesystem=location.fs)
        archive.location = location
        archive.uri = location.uri
        return archive

    def __repr__(self) -> str:
        return f"Archive({self.uri!r})"

    def using(self, on_bad_file: OnBadFile | None) -> Archive:
        """This archive with another ``on_bad_file`` handler (itself if None)."""
        if on_bad_file is None or on_bad_file is self.on_bad_file:
            return self
        other = copy.copy(self)
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
        return bool(self.fs.get_file_info(self.location.root).type == pafs.FileType.Directory)

    # -- listing ------------------------------------------------------------
    def tables(self) -> list[str]:
        """Names of the tables present (directories not starting with ``_`` or ``.``)."""
        if not self.exists():
            return []
        infos = list_dir(self.location, self.location.root)
        names = [i.base_name for i in infos if i.type == pafs.FileType.Directory]
        return sorted(n for n in names if not is_hidden(n))

    def require(self, *, write: bool = False) -> None:
        """Raise unless the path is an archive (``write``: that can be written).

        :class:`~archiver.errors.ArchiveNotFound` (also a ``FileNotFoundError``) if
        nothing is there, :class:`~archiver.errors.NotAnArchiveError` naming the mistake
        for a file, a table, a partition, an archive's parent, another folder or (with
        ``write``) a place that cannot be written; see :mod:`archiver.archive_path`.
        """
        if write or not self._checked:
            check_archive_path(self.location, write=write)
            self._checked = True  # an archive stays one: checked once per handle

    def require_table(self, table: str) -> None:
        """Raise NoArchiveError if ``table`` is not in the archive."""
        tables = self.tables()
        if table not in tables:
            raise NoArchiveError(
                f"no table {table!r} in archive {self.uri} (tables: {', '.join(tables) or 'none'})"
            )

    def select_tables(self, tables: str | Iterable[str] | None) -> list[str]:
        """The tables named (default: all), each checked to exist."""
        self.require()
        known = self.tables()
        if tables is None:
            return known
        names = [tables] if isinstance(tables, str) else list(tables)
        for name in names:
            if name not in known:
                raise ArchiverError(
                    f"unknown table {name!r} in archive {self.uri}: "
                    f"tables are {', '.join(known) or 'none'}"
                )
        return names

    def partitions(self, table: str) -> list[Partition]:
        """The table's ``date=/hour=`` partitions, oldest first.

        Hidden entries (``.``/``_``) are ignored; any other entry that is not a valid
        ``date=YYYY-MM-DD/hour=H`` folder is reported as damaged and skipped.
        """
        self.require_table(table)
        return walk_partitions(self.location, table, self.damaged).partitions

    def partition_files(self, partition: Partition) -> list[pafs.FileInfo]:
        """Visible Parquet files of one partition (replaced, hidden and damaged excluded)."""
        return scan_partition(self.location, partition, self.damaged).visible

    def files(
        self,
        table: str,
        partitions: list[Partition] | None = None,
        *,
        on_bad_file: OnBadFile | None = None,
    ) -> list[str]:
        """URIs of exactly the files archiver reads for ``table``, oldest partition first.

        Local archives give absolute paths; others ``scheme://bucket/key`` (credentials
        and endpoint options are not in them: give the engine its own). Hand the list to
        DuckDB, Polars, Spark or Dask instead of a glob to read exactly what
        :meth:`load` reads (see :meth:`duckdb`).
        """
        paths = self._paths(table, partitions, on_bad_file)
        if self.location.local:
            return paths
        scheme = urlparse(self.uri).scheme or "file"
        return [f"{scheme}://{p.lstrip('/')}" for p in paths]

    def _paths(
        self,
        table: str,
        partitions: list[Partition] | None = None,
        on_bad_file: OnBadFile | None = None,
    ) -> list[str]:
        """Paths (on :attr:`fs`) of the table's readable visible data files."""
        arch = self.using(on_bad_file)
        parts = arch.partitions(table) if partitions is None else partitions
        if len(parts) < 2:
            return [i.path for p in parts for i in arch.partition_files(p)]
        with ThreadPoolExecutor(max_workers=8) as pool:  # footers are read in parallel
            return [i.path for files in pool.map(arch.partition_files, parts) for i in files]

    def duckdb(self, connection: Any = None) -> Any:
        """A DuckDB connection with one view per table over exactly :meth:`files`.

        Each view has the table's columns plus ``date`` (DATE) and ``hour`` (INTEGER).
        The views are a snapshot of the file list: call again after a cleanup (a file
        it deleted then fails with "No such file"). Needs the ``report`` extra.

        Args:
            connection: a ``duckdb.DuckDBPyConnection`` to add the views to (default: a
                new in-memory one).
        """
        try:
            import duckdb
        except ImportError as exc:
            raise ArchiverError(missing_extra("DuckDB", "report", "duckdb")) from exc
        con = duckdb.connect() if connection is None else connection
        for table in self.tables():
            # A pyarrow dataset over the exact list: any filesystem pyarrow reads (S3
            # with the archive's own credentials), checksums verified, filters pushed down.
            con.register(f"_archiver_{table}", self.dataset(table))
            con.execute(
                f'CREATE OR REPLACE VIEW "{table}" AS SELECT * REPLACE '
                f'(CAST("date" AS DATE) AS "date", CAST("hour" AS INTEGER) AS "hour") '
                f'FROM "_archiver_{table}"'
            )
        return con

    def sql(self, query: str) -> pa.Table:
        """The result of a DuckDB ``query`` over :meth:`duckdb`'s views, as an Arrow table.

        Listed again and run again when a file vanished mid-query (a concurrent
        cleanup): DuckDB's error is not an OSError, so :func:`listing.retrying` does not
        apply. A statement without a result gives an empty table. It reads only the
        views: DuckDB's file access is turned off (no ``COPY ... TO``, ``ATTACH``,
        ``read_csv``, ``INSTALL``), so a query can never write into the archive.
        """
        self.require()
        for attempt in range(1, READ_RETRIES + 1):
            con = None
            try:
                con = self.duckdb()  # lists and opens the files: a cleanup may delete one
                # The views read through pyarrow, so they still work without it.
                con.execute("SET enable_external_access = false")
                con.execute("SET lock_configuration = true")
                if not con.extract_statements(query):  # "" or a comment: no answer to show
                    raise ArchiverError(f"no SQL statement in {query!r}")
                relation = con.sql(query)
                return pa.table({}) if relation is None else relation.to_arrow_table()
            except ArchiverError:
                raise
            except Exception as exc:  # duckdb.Error has no common OSError base
                if is_missing_file(exc) and attempt < READ_RETRIES:
                    time.sleep(0.01 * attempt)
                    continue
                if type(exc).__name__ == "PermissionException":
                    raise ArchiverError(
                        "SQL reads only the archive's tables (one view each); it cannot "
                        f"read or write other files: {one_line(exc)}"
                    ) from exc
                raise ArchiverError(f"SQL failed: {one_line(exc)}") from exc
            finally:
                if con is not None:
                    con.close()
        raise AssertionError("unreachable")

    # -- reading ------------------------------------------------------------
    def schema(self, table: str) -> pa.Schema:
        """The table's schema (archiver's own for its tables, else the newest file's)."""
        if table in SCHEMAS:
            return SCHEMAS[table]
        for path in reversed(self._paths(table)):
            try:
                with self.fs.open_input_file(path) as f:
                    return pq.read_schema(f).remove_metadata()
            except (OSError, pa.ArrowException) as exc:
                if is_missing_file(exc):
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
        return arch._dataset(table, arch._paths(table, partitions))

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
        tries = 0

        def attempt() -> pa.Table:
            nonlocal tries
            parts = partitions
            if tries and parts is not None:  # listed again: some may have gone
                parts = arch._refresh(table, parts)
            tries += 1
            paths = arch._paths(table, parts)
            dataset = arch._dataset(table, paths)
            try:
                if limit is not None:
                    return dataset.head(limit, columns=columns, filter=filter)
                return dataset.to_table(columns=columns, filter=filter)
            except (pa.ArrowException, OSError) as exc:
                if is_missing_file(exc) or not _filter_works(dataset, columns, filter):
                    raise
            result = arch._read_each(table, paths, parts, columns, filter)
            return result if limit is None else result.slice(0, limit)

        return retrying(attempt)

    def _read_each(
        self,
        table: str,
        paths: list[str],
        partitions: list[Partition] | None,
        columns: list[str] | None,
        filter: ds.Expression | None,
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
                    if is_missing_file(exc):
                        raise
                    self.mark_bad(path, exc)  # remembered: the next listing skips it
                    merged_failed |= COMPACT_MARK in path.rsplit("/", 1)[-1]
            if not merged_failed:
                break
            paths = self._paths(table, partitions)
        pieces = [done[p] for p in paths if p in done]
        if pieces:
            return pa.concat_tables(pieces)
        return self._dataset(table, []).to_table(columns=columns, filter=filter)

    def _refresh(self, table: str, partitions: list[Partition]) -> list[Partition]:
        keep = {(p.date, p.hour) for p in partitions}
        return [p for p in self.partitions(table) if (p.date, p.hour) in keep]


def _check_on_bad_file(value: Any) -> OnBadFile:
    if value in ("warn", "raise") or callable(value):
        return cast(OnBadFile, value)
    raise ArchiverError(f"invalid on_bad_file {value!r}: use 'warn', 'raise' or a callable")


def _filter_works(
    dataset: ds.Dataset, columns: list[str] | None, filter: ds.Expression | None
) -> bool:
    """Whether ``columns``/``filter`` apply to the schema (else the error is the caller's)."""
    try:
        dataset.schema.empty_table().filter(filter if filter is not None else ds.scalar(True))
        if columns is not None:
            dataset.schema.empty_table().select(columns)
    except (pa.ArrowException, KeyError, TypeError, ValueError):
        return False
    return True
