"""Loading history into pandas: time ranges, projections, filters, latest state, history."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .errors import ArchiverError
from .schema import ENTITY_KEYS

if TYPE_CHECKING:
    from .archive import Archive, Partition

HOUR_US = 3_600_000_000
TimeLike = "datetime | pd.Timestamp | str | float | None"
_PANDAS_TYPES = {
    pa.int64(): pd.Int64Dtype(),
    pa.int32(): pd.Int32Dtype(),
    pa.bool_(): pd.BooleanDtype(),
}


def parse_time(value: Any, *, now: datetime | None = None) -> pd.Timestamp | None:
    """A UTC timestamp from a datetime, an ISO string, epoch seconds, or a duration ago ("2h")."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return pd.Timestamp(value, unit="s", tz="UTC")
    if isinstance(value, str):
        text = value.strip()
        try:
            ago = pd.Timedelta(text)
        except ValueError:
            ago = None
        if ago is not None and not text[:4].isdigit():
            now = now or datetime.now(timezone.utc)
            return pd.Timestamp(now).tz_convert("UTC") - ago
        try:
            value = pd.Timestamp(text)
        except ValueError as exc:
            raise ArchiverError(
                f"cannot read time {value!r}: give an ISO time (2026-11-25T10:00) "
                "or a duration ago (2h, 30m, 7d)"
            ) from exc
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ArchiverError(f"cannot read time {value!r}") from exc
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _micros(ts: pd.Timestamp) -> int:
    return int(ts.value // 1000)


def filters_to_expression(filters: Any) -> ds.Expression | None:
    """A pyarrow Expression from an Expression or ``pandas.read_parquet``'s list of tuples."""
    if filters is None or isinstance(filters, ds.Expression):
        return filters
    try:
        return pq.filters_to_expression(filters)
    except (TypeError, ValueError) as exc:
        raise ArchiverError(
            f"invalid filters {filters!r}: use a pyarrow expression or a list of "
            "(column, op, value) tuples such as [('state', '==', 'FAILURE')]"
        ) from exc


def time_expression(start: pd.Timestamp | None, end: pd.Timestamp | None) -> ds.Expression | None:
    expr = None
    ts_type = pa.timestamp("us", tz="UTC")
    if start is not None:
        expr = ds.field("captured_at") >= pa.scalar(_micros(start), ts_type)
    if end is not None:
        cond = ds.field("captured_at") < pa.scalar(_micros(end), ts_type)
        expr = cond if expr is None else expr & cond
    return expr


def prune(
    partitions: list[Partition], start: pd.Timestamp | None, end: pd.Timestamp | None
) -> list[Partition]:
    """Partitions whose hour overlaps ``[start, end)``."""
    lo = None if start is None else _micros(start)
    hi = None if end is None else _micros(end)
    return [
        p
        for p in partitions
        if (lo is None or p.start_us + HOUR_US > lo) and (hi is None or p.start_us < hi)
    ]


def read_arrow(
    archive: Archive,
    table: str,
    *,
    start: Any = None,
    end: Any = None,
    columns: list[str] | None = None,
    filters: Any = None,
) -> pa.Table:
    """Rows in ``[start, end)`` by ``captured_at`` as an Arrow table."""
    t0, t1 = parse_time(start), parse_time(end)
    parts = prune(archive.partitions(table), t0, t1)
    expr = time_expression(t0, t1)
    extra = filters_to_expression(filters)
    if extra is not None:
        expr = extra if expr is None else expr & extra
    if columns is not None:
        known = set(archive.dataset(table, []).schema.names)
        unknown = [c for c in columns if c not in known]
        if unknown:
            raise ArchiverError(
                f"unknown column(s) {', '.join(unknown)} in {table}; "
                f"columns are: {', '.join(sorted(known))}"
            )
    try:
        return archive.read(table, partitions=parts, columns=columns, filter=expr)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise ArchiverError(f"cannot apply filters {filters!r} to {table}: {exc}") from exc


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """pandas with UTC timestamps, categoricals for dictionary columns, nullable ints."""
    return table.to_pandas(types_mapper=_PANDAS_TYPES.get)


def load_table(
    archive: Archive,
    table: str = "tasks",
    *,
    start: Any = None,
    end: Any = None,
    columns: list[str] | None = None,
    filters: Any = None,
    engine: Literal["pandas", "arrow", "dask"] = "pandas",
) -> Any:
    """Every row of ``table`` in ``[start, end)``; see :meth:`archiver.Archive.load`."""
    if engine == "dask":
        return _load_dask(archive, table, start=start, end=end, columns=columns, filters=filters)
    result = read_arrow(archive, table, start=start, end=end, columns=columns, filters=filters)
    if engine == "arrow":
        return result
    if engine != "pandas":
        raise ArchiverError(f"unknown engine {engine!r}: use 'pandas', 'arrow' or 'dask'")
    return to_pandas(result)


def latest_arrow(table: pa.Table, key: str) -> pa.Table:
    """The last row (by ``captured_at``, then ``snapshot_id``) of each ``key``."""
    if table.num_rows == 0:
        return table
    ordered = table.take(
        pc.sort_indices(table, [("captured_at", "ascending"), ("snapshot_id", "ascending")])
    )
    keys = ordered.column(key)
    if pa.types.is_dictionary(keys.type):
        keys = keys.cast(pa.string())
    index = pa.table({"k": keys, "i": pa.array(range(ordered.num_rows), pa.int64())})
    last = index.group_by("k", use_threads=False).aggregate([("i", "max")]).column("i_max")
    rows = np.sort(last.to_numpy())
    return ordered.take(rows)


def latest(archive: Archive, table: str = "tasks", *, as_of: Any = None, **kwargs: Any):
    """The last row of each task (by uuid) or worker (by hostname) as of ``as_of``."""
    key = ENTITY_KEYS.get(table)
    if key is None:
        raise ArchiverError(f"latest() needs a table with an entity key: {', '.join(ENTITY_KEYS)}")
    end = parse_time(as_of)
    columns = kwargs.pop("columns", None)
    if columns is not None:
        columns = list(dict.fromkeys([*columns, key, "captured_at", "snapshot_id"]))
    engine = kwargs.pop("engine", "pandas")
    # ``as_of`` is inclusive: the cluster as it was at that instant.
    end_excl = None if end is None else end + pd.Timedelta(microseconds=1)
    rows = read_arrow(archive, table, end=end_excl, columns=columns, **kwargs)
    result = latest_arrow(rows, key)
    return result if engine == "arrow" else to_pandas(result).reset_index(drop=True)


def history(archive: Archive, uuid: str, **kwargs: Any) -> pd.DataFrame:
    """Every recorded version of one task, oldest first."""
    rows = read_arrow(archive, "tasks", filters=ds.field("uuid") == uuid, **kwargs)
    rows = rows.take(pc.sort_indices(rows, [("captured_at", "ascending")]))
    return to_pandas(rows).reset_index(drop=True)


def _load_dask(archive: Archive, table: str, *, start, end, columns, filters):
    try:
        import dask.dataframe as dd
    except ImportError as exc:
        raise ArchiverError(
            'engine="dask" needs dask: pip install "archiver[dask]"'
        ) from exc
    t0, t1 = parse_time(start), parse_time(end)
    parts = prune(archive.partitions(table), t0, t1)
    expr = time_expression(t0, t1)
    extra = filters_to_expression(filters)
    if extra is not None:
        expr = extra if expr is None else expr & extra
    meta = to_pandas(archive.dataset(table, []).to_table(columns=columns).slice(0, 0))
    if not parts:
        return dd.from_pandas(meta, npartitions=1)

    def read_one(partition: Partition) -> pd.DataFrame:
        return to_pandas(archive.read(table, partitions=[partition], columns=columns, filter=expr))

    return dd.from_map(read_one, parts, meta=meta, enforce_metadata=False)
