"""The convenient object API, composed on top: ``archiver.Archive(...).load()``, ``.compact()``...

:class:`Archive` is the read handle (:class:`archiver.archive.Archive`) with the
operations as methods: each method *is* the function of :mod:`archiver.query`,
:mod:`archiver.maintenance` or :mod:`archiver.check` (whose first argument is the
archive), so signatures, return types and documentation have one home.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import pandas as pd
import pyarrow as pa

from . import archive as _archive
from .archive import OnBadFile
from .check import check
from .maintenance import cleanup, compact, expire
from .query import Engine, history, latest, load_table

if TYPE_CHECKING:
    import dask.dataframe as dd


class Archive(_archive.Archive):
    """An archive written by :class:`archiver.ParquetCamera`: read it, query it, maintain it.

    Args:
        path_or_uri: a local path or a URI (``file://``, ``s3://``, ``memory://``...).
        filesystem: an explicit ``pyarrow.fs.FileSystem`` (then the path is on it).
        storage_options: options of the fsspec filesystem (e.g. s3fs's ``key``,
            ``secret``, ``client_kwargs={"endpoint_url": ...}``), instead of ``filesystem``.
        on_bad_file: what readers do with a damaged file or folder: ``"warn"``
            (default: skip it with a warning naming it), ``"raise"``, or a callable
            ``handler(path, reason)``.
    """

    # ``engine`` decides the type of the result.
    @overload
    def load(
        self,
        table: str = ...,
        *,
        start: Any = ...,
        end: Any = ...,
        columns: Sequence[str] | None = ...,
        filters: Any = ...,
        engine: Literal["pandas"] = ...,
        limit: int | None = ...,
        on_bad_file: OnBadFile | None = ...,
    ) -> pd.DataFrame: ...

    @overload
    def load(
        self,
        table: str = ...,
        *,
        start: Any = ...,
        end: Any = ...,
        columns: Sequence[str] | None = ...,
        filters: Any = ...,
        engine: Literal["arrow"],
        limit: int | None = ...,
        on_bad_file: OnBadFile | None = ...,
    ) -> pa.Table: ...

    @overload
    def load(
        self,
        table: str = ...,
        *,
        start: Any = ...,
        end: Any = ...,
        columns: Sequence[str] | None = ...,
        filters: Any = ...,
        engine: Literal["dask"],
        limit: int | None = ...,
        on_bad_file: OnBadFile | None = ...,
    ) -> dd.DataFrame: ...

    @overload
    def load(
        self,
        table: str = ...,
        *,
        start: Any = ...,
        end: Any = ...,
        columns: Sequence[str] | None = ...,
        filters: Any = ...,
        engine: Engine,
        limit: int | None = ...,
        on_bad_file: OnBadFile | None = ...,
    ) -> pd.DataFrame | pa.Table | dd.DataFrame: ...

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
    ) -> pd.DataFrame | pa.Table | dd.DataFrame:
        """Load ``table`` (see :func:`archiver.query.load_table`).

        Written out, not ``load = load_table``: a mistyped keyword then names ``load()``.
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

    latest = latest
    history = history
    check = check
    compact = compact
    expire = expire
    cleanup = cleanup


# ``engine`` decides the type of the result, as for :func:`archiver.query.load_table`.
@overload
def load(
    path_or_uri: str | os.PathLike[str],
    table: str = ...,
    *,
    start: Any = ...,
    end: Any = ...,
    columns: Sequence[str] | None = ...,
    filters: Any = ...,
    engine: Literal["pandas"] = ...,
    limit: int | None = ...,
    on_bad_file: OnBadFile | None = ...,
    filesystem: Any = ...,
    storage_options: Mapping[str, Any] | None = ...,
) -> pd.DataFrame: ...


@overload
def load(
    path_or_uri: str | os.PathLike[str],
    table: str = ...,
    *,
    start: Any = ...,
    end: Any = ...,
    columns: Sequence[str] | None = ...,
    filters: Any = ...,
    engine: Literal["arrow"],
    limit: int | None = ...,
    on_bad_file: OnBadFile | None = ...,
    filesystem: Any = ...,
    storage_options: Mapping[str, Any] | None = ...,
) -> pa.Table: ...


@overload
def load(
    path_or_uri: str | os.PathLike[str],
    table: str = ...,
    *,
    start: Any = ...,
    end: Any = ...,
    columns: Sequence[str] | None = ...,
    filters: Any = ...,
    engine: Literal["dask"],
    limit: int | None = ...,
    on_bad_file: OnBadFile | None = ...,
    filesystem: Any = ...,
    storage_options: Mapping[str, Any] | None = ...,
) -> dd.DataFrame: ...


@overload
def load(
    path_or_uri: str | os.PathLike[str],
    table: str = ...,
    *,
    start: Any = ...,
    end: Any = ...,
    columns: Sequence[str] | None = ...,
    filters: Any = ...,
    engine: Engine,
    limit: int | None = ...,
    on_bad_file: OnBadFile | None = ...,
    filesystem: Any = ...,
    storage_options: Mapping[str, Any] | None = ...,
) -> pd.DataFrame | pa.Table | dd.DataFrame: ...


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
    filesystem: Any = None,
    storage_options: Mapping[str, Any] | None = None,
) -> pd.DataFrame | pa.Table | dd.DataFrame:
    """Load ``table`` of the archive at ``path_or_uri`` (see :func:`archiver.query.load_table`)."""
    return load_table(
        Archive(path_or_uri, filesystem=filesystem, storage_options=storage_options),
        table,
        start=start,
        end=end,
        columns=columns,
        filters=filters,
        engine=engine,
        limit=limit,
        on_bad_file=on_bad_file,
    )
