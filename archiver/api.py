"""The convenient object API, composed on top: ``archiver.Archive(...).load()``, ``.compact()``...

:class:`Archive` is the read handle (:class:`archiver.archive.Archive`) with the
operations as methods; each method is one call into :mod:`archiver.query`,
:mod:`archiver.maintenance` or :mod:`archiver.check`, whose functions take any read
handle.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa

from . import archive as _archive
from .archive import OnBadFile
from .check import CheckReport
from .check import check as _check
from .maintenance import (
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_TARGET_FILE_BYTES,
    CompactionReport,
    ExpiryReport,
    Keep,
    ProgressCallback,
)
from .maintenance import compact as _compact
from .maintenance import expire as _expire
from .query import Engine, history, latest, load_table


class Archive(_archive.Archive):
    """An archive written by :class:`archiver.ParquetCamera`: read it, query it, maintain it.

    Args:
        path_or_uri: a local path or a URI (``file://``, ``s3://``, ``memory://``...).
        filesystem: an explicit ``pyarrow.fs.FileSystem`` (then the path is on it).
        on_bad_file: what readers do with a damaged file or folder: ``"warn"``
            (default: skip it with a warning naming it), ``"raise"``, or a callable
            ``handler(path, reason)``.
    """

    def load(
        self,
        table: str = "tasks",
        *,
        start: Any = None,
        end: Any = None,
        columns: Sequence[str] | None = None,
        filters: Any = None,
        engine: Engine = "pandas",
        limit: int | None = None,
        on_bad_file: OnBadFile | None = None,
    ) -> Any:
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
        return load_table(
            self,
            table,
            start=start,
            end=end,
            columns=columns,
            filters=filters,
            engine=engine,
            limit=limit,
            on_bad_file=on_bad_file,
        )

    def latest(
        self,
        table: str = "tasks",
        *,
        as_of: Any = None,
        start: Any = None,
        columns: Sequence[str] | None = None,
        filters: Any = None,
        engine: Engine = "pandas",
        limit: int | None = None,
        on_bad_file: OnBadFile | None = None,
    ) -> pd.DataFrame | pa.Table:
        """The last row of each task (by uuid) or worker (by hostname) as of ``as_of``.

        The cluster as it was at ``as_of`` (inclusive; default: the newest snapshot).
        ``start`` ignores entities not recorded since then; ``filters`` apply to the
        latest rows, so ``state == "FAILURE"`` means "tasks whose last known state is
        FAILURE"; ``engine`` is ``"pandas"`` or ``"arrow"``; the other arguments are as
        :meth:`load`'s. Rows are ordered by the time of their last version; the tie
        rule is :mod:`archiver.rows`'.
        """
        return latest(
            self,
            table,
            as_of=as_of,
            start=start,
            columns=columns,
            filters=filters,
            engine=engine,
            limit=limit,
            on_bad_file=on_bad_file,
        )

    def history(
        self,
        uuid: str,
        *,
        table: str = "tasks",
        start: Any = None,
        end: Any = None,
        columns: Sequence[str] | None = None,
        engine: Engine = "pandas",
        on_bad_file: OnBadFile | None = None,
    ) -> pd.DataFrame | pa.Table:
        """Every recorded version of one task, oldest first (``table="workers"``: of a
        worker, ``uuid`` being its hostname); the other arguments are as :meth:`load`'s."""
        return history(
            self,
            uuid,
            table=table,
            start=start,
            end=end,
            columns=columns,
            engine=engine,
            on_bad_file=on_bad_file,
        )

    def check(self, *, quarantine: bool = False, lock_timeout: float = 10.0) -> CheckReport:
        """Read every file fully and report damage; see :func:`archiver.check.check`."""
        return _check(self, quarantine=quarantine, lock_timeout=lock_timeout)

    def compact(
        self,
        *,
        tables: str | Iterable[str] | None = None,
        before: Any = None,
        target_file_bytes: int | str = DEFAULT_TARGET_FILE_BYTES,
        keep: Keep = "all",
        dry_run: bool = False,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        progress: ProgressCallback | None = None,
    ) -> CompactionReport:
        """Merge the small files of closed hours; see :func:`archiver.maintenance.compact`."""
        return _compact(
            self,
            tables=tables,
            before=before,
            target_file_bytes=target_file_bytes,
            keep=keep,
            dry_run=dry_run,
            lock_timeout=lock_timeout,
            progress=progress,
        )

    def expire(
        self,
        *,
        older_than: Any = None,
        per_state: Mapping[str, Any] | Iterable[str] | None = None,
        now: Any = None,
        dry_run: bool = True,
        tables: str | Iterable[str] | None = None,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        progress: ProgressCallback | None = None,
    ) -> ExpiryReport:
        """Drop old hours and expired tasks (dry run by default); see
        :func:`archiver.maintenance.expire`."""
        return _expire(
            self,
            older_than=older_than,
            per_state=per_state,
            now=now,
            dry_run=dry_run,
            tables=tables,
            lock_timeout=lock_timeout,
            progress=progress,
        )


def load(
    path_or_uri: str | os.PathLike[str],
    table: str = "tasks",
    *,
    start: Any = None,
    end: Any = None,
    columns: Sequence[str] | None = None,
    filters: Any = None,
    engine: Engine = "pandas",
    limit: int | None = None,
    on_bad_file: OnBadFile | None = None,
) -> Any:
    """Load ``table`` of the archive at ``path_or_uri`` (see :meth:`Archive.load`)."""
    return Archive(path_or_uri).load(
        table,
        start=start,
        end=end,
        columns=columns,
        filters=filters,
        engine=engine,
        limit=limit,
        on_bad_file=on_bad_file,
    )
