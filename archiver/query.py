"""Loading history into pandas: time ranges, projections, filters, latest state, history.

Every read goes through the same three steps:

1. **Partition pruning.** ``[start, end)`` is mapped to the ``date=/hour=`` directories it
   overlaps; files in the other partitions are never listed or opened.
2. **Row-group pruning.** The time range (and any ``filters``) becomes a pyarrow
   expression, so row groups whose ``captured_at`` statistics fall outside the range are
   skipped inside the files that are opened.
3. **Conversion.** Arrow to pandas with the dtypes pandas users expect: timestamps
   tz-aware UTC, dictionary columns (``name``, ``state``, ``worker``...) categorical,
   integer columns nullable (``Int32``/``Int64``), booleans ``boolean``.

Files written by an older schema (missing columns) load with those columns null,
because the dataset is always opened with the table's current, explicit schema.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from .archive import Archive, OnBadFile
from .errors import ArchiverError, EmptyResultWarning, missing_extra, one_line
from .layout import Partition
from .listing import Rescan, all_facts, is_missing_file, retrying
from .rows import latest_positions
from .schema import ENTITY_KEYS, PARTITION_SCHEMA
from .timeparse import parse_time, to_micros

if TYPE_CHECKING:
    import dask.dataframe as dd

Engine = Literal["pandas", "arrow", "dask"]
ENGINES = ("pandas", "arrow", "dask")
_PANDAS_TYPES = {
    pa.int8(): pd.Int8Dtype(),
    pa.int16(): pd.Int16Dtype(),
    pa.int32(): pd.Int32Dtype(),
    pa.int64(): pd.Int64Dtype(),
    pa.uint8(): pd.UInt8Dtype(),
    pa.uint16(): pd.UInt16Dtype(),
    pa.uint32(): pd.UInt32Dtype(),
    pa.uint64(): pd.UInt64Dtype(),
    pa.bool_(): pd.BooleanDtype(),
}


# -- times -------------------------------------------------------------------------------
def time_expression(start: pd.Timestamp | None, end: pd.Timestamp | None) -> ds.Expression | None:
    """``start <= captured_at < end`` as a pyarrow expression (either bound may be None)."""
    expr = None
    ts_type = pa.timestamp("us", tz="UTC")
    if start is not None:
        expr = ds.field("captured_at") >= pa.scalar(to_micros(start), ts_type)
    if end is not None:
        cond = ds.field("captured_at") < pa.scalar(to_micros(end), ts_type)
        expr = cond if expr is None else expr & cond
    return expr


def prune(
    partitions: list[Partition], start: pd.Timestamp | None, end: pd.Timestamp | None
) -> list[Partition]:
    """Partitions whose hour overlaps ``[start, end)``."""
    lo = None if start is None else to_micros(start)
    hi = None if end is None else to_micros(end)
    return [p for p in partitions if p.overlaps(lo, hi)]


# -- filters -----------------------------------------------------------------------------
_OPS = {"=": "==", "==": "==", "!=": "!=", "<": "<", ">": ">", "<=": "<=", ">=": ">="}
_LIST_OPS = ("in", "not in")
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


_WHERE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(!=|>=|<=|==|=|>|<)\s*(.*?)\s*$", re.S)
#: Columns whose values are Celery's upper-case names: matched case-insensitively.
_UPPER_CASE_COLUMNS = ("state",)


def parse_where(conditions: Iterable[str]) -> list[tuple[str, str, Any]]:
    """``("name=tasks.add", "state=FAILURE,RETRY", "runtime>1")`` -> read_parquet-style filters.

    ``=``/``!=`` with a comma-separated list mean "in"/"not in"; the value ``null``
    with ``=``/``!=`` tests for a missing value. Values are converted to the column's
    type when the filters are applied (times accept ISO strings and durations such as
    ``2h``; ``state`` values any case).
    """
    filters: list[tuple[str, str, Any]] = []
    for text in conditions:
        match = _WHERE.match(text)
        if not match:
            raise ArchiverError(
                f"cannot read condition {text!r}: use COLUMN OP VALUE with OP one of "
                "=, !=, >, <, >=, <= (e.g. name=tasks.add, state=FAILURE,RETRY, runtime>1.5)"
            )
        column, op, value = match.groups()
        op = "==" if op == "=" else op
        if op in ("==", "!=") and value.lower() == "null":
            filters.append((column, op, None))
        elif op in ("==", "!=") and "," in value:
            values = [v.strip() for v in value.split(",") if v.strip()]
            filters.append((column, "in" if op == "==" else "not in", values))
        else:
            filters.append((column, op, value))
    return filters


def _coerce(value: Any, type_: pa.DataType, column: str) -> Any:
    """``value`` (often a string from the command line) as a scalar of ``type_``."""
    if value is None:
        return None
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    if pa.types.is_nested(type_):
        raise ArchiverError(
            f"cannot compare column {column} ({type_}) with {value!r}: a list column "
            "can only be tested for null"
        )
    try:
        floating = isinstance(value, (float, str)) and pa.types.is_floating(type_)
        if floating and math.isnan(float(value)):  # NaN equals nothing: no row would match
            raise ValueError(value)
        if pa.types.is_timestamp(type_):
            ts = parse_time(value)  # not None: value is not None
            return None if ts is None else pa.scalar(to_micros(ts), pa.timestamp("us", tz="UTC"))
        if pa.types.is_integer(type_) and isinstance(value, (str, int)):
            return pa.scalar(int(value), type_)  # OverflowError/ArrowInvalid: out of range
        if isinstance(value, str):
            if pa.types.is_floating(type_):
                return float(value)
            if pa.types.is_boolean(type_):
                low = value.strip().lower()
                if low in _TRUE | _FALSE:
                    return low in _TRUE
                raise ValueError(value)
        elif pa.types.is_string(type_) or pa.types.is_large_string(type_):
            value = str(value)
        if isinstance(value, str) and column in _UPPER_CASE_COLUMNS:
            return value.upper()
    except (ValueError, OverflowError, pa.ArrowInvalid, ArchiverError) as exc:
        hint = ": give an ISO time or a duration ago (2h)" if pa.types.is_timestamp(type_) else ""
        if isinstance(exc, (OverflowError, pa.ArrowInvalid)):
            hint = ": out of range"
        raise ArchiverError(
            f"cannot compare column {column} ({type_}) with {value!r}{hint}"
        ) from exc
    return value


def _check_columns(names: Iterable[str], schema: pa.Schema, table: str | None) -> None:
    unknown = [c for c in names if schema.get_field_index(c) < 0]
    if unknown:
        where = f" in {table}" if table else ""
        raise ArchiverError(
            f"unknown column(s) {', '.join(map(repr, unknown))}{where}; "
            f"columns are: {', '.join(schema.names)}"
        )


def _term(item: Any, schema: pa.Schema | None, table: str | None) -> ds.Expression:
    if not isinstance(item, (tuple, list)) or len(item) != 3:
        raise ArchiverError(
            f"invalid filter {item!r}: use (column, op, value) such as ('state', '==', 'FAILURE')"
        )
    column, op, value = item
    op = str(op).strip().lower()
    if schema is not None:
        _check_columns([column], schema, table)
        type_ = schema.field(column).type
    else:
        type_ = None
    ref = ds.field(column)
    if op in _LIST_OPS:
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise ArchiverError(f"filter {item!r}: {op!r} needs a list of values")
        values = list(value)
        if type_ is not None:
            values = [_coerce(v, type_, column) for v in values]
            values = [v.as_py() if isinstance(v, pa.Scalar) else v for v in values]
            value_type = type_.value_type if pa.types.is_dictionary(type_) else type_
            try:
                values = pa.array(values, value_type)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise ArchiverError(f"filter {item!r}: {exc}") from exc
        expr = ref.isin(values)
        return ~expr if op == "not in" else expr
    if op not in _OPS:
        raise ArchiverError(
            f"invalid filter operator {op!r} in {item!r}: use one of "
            "==, !=, <, >, <=, >=, in, not in"
        )
    op = _OPS[op]
    if type_ is not None:
        value = _coerce(value, type_, column)
    if value is None:
        if op == "==":
            return ref.is_null()
        if op == "!=":
            return ref.is_valid()
        raise ArchiverError(f"filter {item!r}: only == and != compare with None")
    return {
        "==": ref.__eq__,
        "!=": ref.__ne__,
        "<": ref.__lt__,
        ">": ref.__gt__,
        "<=": ref.__le__,
        ">=": ref.__ge__,
    }[op](value)


def filters_to_expression(
    filters: Any, schema: pa.Schema | None = None, *, table: str | None = None
) -> ds.Expression | None:
    """A pyarrow Expression from an Expression or ``pandas.read_parquet``'s list of tuples.

    The list form is ``[(column, op, value), ...]`` (all must hold) or a list of such
    lists (any of them must hold); a condition may also be a string as the command
    line takes it (``"state=FAILURE,RETRY"``, ``"runtime>=0.5"``, see :func:`parse_where`);
    ``op`` is one of ``==`` (or ``=``), ``!=``, ``<``,
    ``>``, ``<=``, ``>=``, ``in``, ``not in``. With ``schema``, column names are checked
    and values converted to the column's type: timestamps accept anything
    :func:`parse_time` does, numbers and booleans accept strings; ``None`` with ``==``
    or ``!=`` tests for null.
    """
    filters = _parsed(filters)
    if filters is None or isinstance(filters, ds.Expression):
        return filters
    if isinstance(filters, tuple) and len(filters) == 3 and isinstance(filters[0], str):
        filters = [filters]
    if not isinstance(filters, (list, tuple)):
        raise ArchiverError(
            f"invalid filters {filters!r}: use a pyarrow expression or a list of "
            "(column, op, value) tuples such as [('state', '==', 'FAILURE')]"
        )
    if not filters:
        return None
    groups = filters if all(isinstance(f, list) for f in filters) else [filters]
    expr = None
    for group in groups:
        if not group:
            raise ArchiverError(f"invalid filters {filters!r}: an empty group of conditions")
        conj = None
        for item in group:
            term = _term(item, schema, table)
            conj = term if conj is None else conj & term
        expr = conj if expr is None else expr | conj
    return expr


def _parsed(filters: Any) -> Any:
    """``filters`` with conditions given as strings parsed by :func:`parse_where`."""
    if isinstance(filters, str):
        return parse_where([filters])
    if isinstance(filters, (list, tuple)) and any(isinstance(f, str) for f in filters):
        if (
            isinstance(filters, tuple)
            and len(filters) == 3
            and not all(isinstance(f, str) and _WHERE.match(f) for f in filters)
        ):
            return filters  # one (column, op, value) tuple
        return [
            parsed for f in filters for parsed in (parse_where([f]) if isinstance(f, str) else [f])
        ]
    return filters


def _select(schema: pa.Schema, names: Sequence[str]) -> pa.Schema:
    return pa.schema([schema.field(n) for n in names])


_NO_FIELD = re.compile(r"No match for FieldRef\.Name\((.*?)\) in")


def expression_columns(
    expr: ds.Expression, schema: pa.Schema, *, table: str | None = None
) -> list[str]:
    """The columns of ``schema`` that ``expr`` reads; raises ArchiverError on unknown ones."""
    found: list[str] = []
    for _ in range(len(schema) + 1):
        empty = _select(schema, found).empty_table()
        try:
            empty.filter(expr)
            return found
        except pa.ArrowInvalid as exc:
            match = _NO_FIELD.search(str(exc))
            if match is None:
                raise ArchiverError(f"invalid filter {expr}: {exc}") from exc
            name = match.group(1)
            if schema.get_field_index(name) < 0 or name in found:
                _check_columns([name], schema, table)
                raise ArchiverError(f"invalid filter {expr}: {exc}") from exc
            found.append(name)
        except (pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise ArchiverError(f"invalid filter {expr}: {exc}") from exc
    return found


# -- reading -----------------------------------------------------------------------------
def full_schema(archive: Archive, table: str) -> pa.Schema:
    """The table's schema plus the ``date``/``hour`` partition columns."""
    return pa.schema(list(archive.schema(table)) + list(PARTITION_SCHEMA))


@dataclass
class Plan:
    """What a read needs: the pruned partitions, the row filter, the columns."""

    table: str
    schema: pa.Schema
    partitions: list[Partition]
    columns: list[str]
    filter: ds.Expression | None
    start: pd.Timestamp | None = None
    end: pd.Timestamp | None = None
    user_filter: ds.Expression | None = None
    filter_columns: list[str] = field(default_factory=list)


def plan(
    archive: Archive,
    table: str,
    *,
    start: Any = None,
    end: Any = None,
    columns: Sequence[str] | None = None,
    filters: Any = None,
) -> Plan:
    """Validate the arguments of a read and prune the partitions (nothing is opened)."""
    archive.require()
    archive.require_table(table)
    t0, t1 = parse_time(start), parse_time(end)
    schema = full_schema(archive, table)
    if isinstance(columns, str):
        columns = [c.strip() for c in columns.split(",") if c.strip()]
    wanted: list[str]
    if columns is None:
        wanted = archive.schema(table).names
    else:
        wanted = list(dict.fromkeys(columns))
        _check_columns(wanted, schema, table)
    user = filters_to_expression(filters, schema, table=table)
    filter_columns = [] if user is None else expression_columns(user, schema, table=table)
    expr = time_expression(t0, t1)
    if user is not None:
        expr = user if expr is None else expr & user
    parts = archive.partitions(table)
    if t0 is not None or t1 is not None:
        parts = prune(parts, t0, t1)
    return Plan(table, schema, parts, wanted, expr, t0, t1, user, filter_columns)


def _fragment_table(
    archive: Archive, fragment: ds.ParquetFileFragment, *, schema: pa.Schema, columns: list[str]
) -> pa.Table:
    """``columns`` of ``fragment``; a damaged file is reported and the read planned again."""
    try:
        # no filter: an error here is the file's
        return fragment.to_table(schema=schema, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        if is_missing_file(exc):
            raise
        archive.mark_bad(fragment.path, exc)
        raise Rescan() from exc


@contextlib.contextmanager
def _arrow_errors(table: str, filters: Any) -> Iterator[None]:
    """Turn pyarrow's errors during a scan into one-line ArchiverErrors."""
    try:
        yield
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise ArchiverError(f"cannot apply filters {filters!r} to {table}: {exc}") from exc
    except (pa.ArrowInvalid, OSError) as exc:  # e.g. a damaged file
        raise ArchiverError(f"cannot read {table}: {one_line(exc)}") from exc


def read_arrow(
    archive: Archive,
    table: str,
    *,
    start: Any = None,
    end: Any = None,
    columns: Sequence[str] | None = None,
    filters: Any = None,
    limit: int | None = None,
    tail: int | None = None,
    on_bad_file: OnBadFile | None = None,
) -> pa.Table:
    """Rows in ``[start, end)`` by ``captured_at`` as an Arrow table (oldest first).

    ``tail``: only the newest ``tail`` rows, newest first. An empty result comes with
    an :class:`EmptyResultWarning` saying why.
    """
    archive = archive.using(on_bad_file)
    _check_limits(limit, tail)
    p = plan(archive, table, start=start, end=end, columns=columns, filters=filters)
    if not p.partitions:
        result = _select(p.schema, p.columns).empty_table()
    elif tail is not None:
        result = retrying(lambda: _tail_read(archive, p, tail))
    else:
        with _arrow_errors(table, filters):
            result = archive.read(
                table, partitions=p.partitions, columns=p.columns, filter=p.filter, limit=limit
            )
    if result.num_rows == 0 and limit != 0 and tail != 0:
        warn_empty(archive, p, filters)
    return result


def to_pandas(table: pa.Table, *, owned: bool = False) -> pd.DataFrame:
    """pandas with UTC timestamps, categoricals for dictionary columns, nullable ints.

    ``owned``: ``table`` is not used afterwards, so its memory is released column by
    column during the conversion (lower peak memory for big results).
    """
    frame: pd.DataFrame
    if owned:
        frame = table.to_pandas(
            types_mapper=_PANDAS_TYPES.get, self_destruct=True, split_blocks=True
        )
    else:
        frame = table.to_pandas(types_mapper=_PANDAS_TYPES.get)
    return frame


def _engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ArchiverError(f"unknown engine {engine!r}: use 'pandas', 'arrow' or 'dask'")
    return engine


# ``engine`` decides the type of the result.
@overload
def load_table(
    archive: Archive,
    table: str = ...,
    *,
    start: Any = ...,
    end: Any = ...,
    columns: Sequence[str] | None = ...,
    filters: Any = ...,
    engine: Literal["pandas"] = ...,
    limit: int | None = ...,
    tail: int | None = ...,
    on_bad_file: OnBadFile | None = ...,
) -> pd.DataFrame: ...


@overload
def load_table(
    archive: Archive,
    table: str = ...,
    *,
    start: Any = ...,
    end: Any = ...,
    columns: Sequence[str] | None = ...,
    filters: Any = ...,
    engine: Literal["arrow"],
    limit: int | None = ...,
    tail: int | None = ...,
    on_bad_file: OnBadFile | None = ...,
) -> pa.Table: ...


@overload
def load_table(
    archive: Archive,
    table: str = ...,
    *,
    start: Any = ...,
    end: Any = ...,
    columns: Sequence[str] | None = ...,
    filters: Any = ...,
    engine: Literal["dask"],
    limit: int | None = ...,
    tail: int | None = ...,
    on_bad_file: OnBadFile | None = ...,
) -> dd.DataFrame: ...


@overload
def load_table(
    archive: Archive,
    table: str = ...,
    *,
    start: Any = ...,
    end: Any = ...,
    columns: Sequence[str] | None = ...,
    filters: Any = ...,
    engine: Engine,
    limit: int | None = ...,
    tail: int | None = ...,
    on_bad_file: OnBadFile | None = ...,
) -> pd.DataFrame | pa.Table | dd.DataFrame: ...


def load_table(
    archive: Archive,
    table: str = "tasks",
    *,
    start: Any = None,
    end: Any = None,
    columns: Sequence[str] | None = None,
    filters: Any = None,
    engine: Engine = "pandas",
    limit: int | None = None,
    tail: int | None = None,
    on_bad_file: OnBadFile | None = None,
) -> pd.DataFrame | pa.Table | dd.DataFrame:
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
        tail: only the newest ``tail`` rows, newest first (read from the newest
            partitions back, until there are enough).
        on_bad_file: ``"warn"`` (skip a damaged file or folder with a warning naming
            it), ``"raise"`` or a callable ``(path, reason)``; default: the archive's.

    Timestamps are tz-aware UTC, ``name``/``state``/``worker`` categorical and
    integers nullable; files written by an older schema load with missing columns null.
    An empty result comes with an :class:`~archiver.EmptyResultWarning` saying why.
    """
    archive = archive.using(on_bad_file)
    if _engine(engine) == "dask":
        return _load_dask(archive, table, start=start, end=end, columns=columns, filters=filters)
    result = read_arrow(
        archive,
        table,
        start=start,
        end=end,
        columns=columns,
        filters=filters,
        limit=limit,
        tail=tail,
    )
    return result if engine == "arrow" else to_pandas(result, owned=True)


# -- tail ------------------------------------------------------------------------------
def _check_limits(limit: int | None, tail: int | None) -> None:
    for name, value in (("limit", limit), ("tail", tail)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ArchiverError(f"invalid {name} {value!r}: give a whole number, 0 or more")
    if limit is not None and tail is not None:
        raise ArchiverError("give limit (the oldest rows) or tail (the newest), not both")


def _newest_first(table: pa.Table) -> pa.Table:
    """``table`` (oldest first, ties in read order) reversed: newest first, ties too."""
    return table.take(pa.array(np.arange(table.num_rows - 1, -1, -1, dtype=np.int64)))


def _tail_read(archive: Archive, p: Plan, n: int) -> pa.Table:
    """The newest ``n`` rows of the plan, newest first.

    Partitions are hours of ``captured_at``, so the newest rows are in the newest
    partitions: they are read from the last back until ``n`` rows are in hand, which
    bounds memory by the rows of those partitions, not by the archive.
    """
    columns = list(dict.fromkeys([*p.columns, "captured_at"]))
    pieces: list[pa.Table] = []
    have = 0
    for partition in reversed(p.partitions):
        if have >= n:
            break
        with _arrow_errors(p.table, p.user_filter):
            piece = archive.read(p.table, partitions=[partition], columns=columns, filter=p.filter)
        pieces.append(piece)
        have += piece.num_rows
    if not pieces:
        return _select(p.schema, p.columns).empty_table()
    rows = _newest_first(pa.concat_tables(reversed(pieces)))
    order = pc.sort_indices(rows, [("captured_at", "descending")])  # stable
    return rows.take(order.slice(0, n)).select(p.columns)


# -- why a result is empty ---------------------------------------------------------------
DASH = "\u2013"  # an en dash between the two ends of a span


def _when(ts: pd.Timestamp | None, open_end: str) -> str:
    return open_end if ts is None else ts.strftime("%Y-%m-%d %H:%M:%S")


def _equalities(filters: Any, schema: pa.Schema) -> list[tuple[str, list[Any]]]:
    """``(column, values)`` of the ``==``/``in`` conditions on text columns that must all hold."""
    filters = _parsed(filters)
    if isinstance(filters, tuple) and len(filters) == 3 and isinstance(filters[0], str):
        filters = [filters]
    if not isinstance(filters, list) or not all(isinstance(f, (tuple, list)) for f in filters):
        return []
    if any(isinstance(f, list) for f in filters):  # OR groups: no single reason
        return []
    found = []
    for column, op, value in (f for f in filters if len(f) == 3):
        op = str(op).strip().lower()
        if schema.get_field_index(column) < 0 or op not in ("=", "==", "in"):
            continue
        type_ = schema.field(column).type
        type_ = type_.value_type if pa.types.is_dictionary(type_) else type_
        if not pa.types.is_string(type_):
            continue
        values = list(value) if op == "in" else [value]
        if all(isinstance(v, str) for v in values):
            found.append((column, values))
    return found


def explain_empty(archive: Archive, p: Plan, filters: Any = None) -> str:
    """Why the read planned by ``p`` (with ``filters``) returns no rows, in one line."""
    if p.start is not None and p.end is not None and p.start >= p.end:
        relation = "is after" if p.start > p.end else "equals"
        return f"start ({_when(p.start, '')}) {relation} end ({_when(p.end, '')})"
    info = retrying(lambda: _describe_table(archive, p.table))
    window = f"{_when(p.start, 'the first row')}{DASH}{_when(p.end, 'now')}"
    if info.first is None or info.last is None:
        return f"table {p.table} has no rows"
    if (p.start is not None and p.start > info.last) or (p.end is not None and p.end <= info.first):
        return (
            f"the archive spans {_when(info.first, '')}{DASH}{_when(info.last, '')} "
            f"and the window is {window}"
        )
    time_filter = time_expression(p.start, p.end)
    for column, values in _equalities(filters, p.schema):
        with _arrow_errors(p.table, filters):
            present = archive.read(
                p.table, partitions=p.partitions, columns=[column], filter=time_filter
            ).column(column)
        if pa.types.is_dictionary(present.type):
            present = present.cast(present.type.value_type)
        known = sorted(v for v in pc.unique(present).to_pylist() if v is not None)
        wanted = [v.upper() if column in _UPPER_CASE_COLUMNS else v for v in values]
        if not set(wanted) & set(known):
            shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
            return f"no value {values[0]!r} in column {column} (values: {shown or 'none'})"
    where = "" if p.start is None and p.end is None else f" in the window {window}"
    if p.user_filter is None and not filters:
        return f"no row of {p.table}{where}"
    return f"no row of {p.table}{where} matches all the filters"


def warn_empty(archive: Archive, p: Plan, filters: Any = None) -> None:
    """Issue :class:`EmptyResultWarning` with :func:`explain_empty`'s reason."""
    warnings.warn(explain_empty(archive, p, filters), EmptyResultWarning, stacklevel=3)


# -- latest / history --------------------------------------------------------------------
def _entity_key(table: str) -> str:
    key = ENTITY_KEYS.get(table)
    if key is None:
        raise ArchiverError(
            f"latest() needs a table with an entity key ({', '.join(ENTITY_KEYS)}), got {table!r}"
        )
    return key


@dataclass
class _Keys:
    """Pass 1 of a two-pass read: a few columns of every row, and where each file starts."""

    schema: pa.Schema
    fragments: list[ds.ParquetFileFragment]
    bounds: np.ndarray  # row offset of each file, plus the total
    columns: dict[str, pa.ChunkedArray]
    micros: np.ndarray  # captured_at in µs
    inside: np.ndarray | None  # positions in [start, end), None when unbounded


def _scan_keys(
    archive: Archive,
    p: Plan,
    key: str,
    match: Callable[[pa.ChunkedArray], np.ndarray] | None = None,
) -> _Keys:
    """Read only ``key`` and ``captured_at`` of every row of the pruned partitions.

    With ``match`` (keys of one file -> boolean mask), only the matching positions are
    kept, in ``inside``, instead of the keys (whose memory is then released file by file).
    """
    dataset = archive.dataset(p.table, p.partitions)
    fragments = list(dataset.get_fragments())
    schema = dataset.schema
    chunks: list[pa.Array] = []
    micros, offsets, matched = [], [0], []
    for fragment in fragments:
        part = _fragment_table(archive, fragment, schema=schema, columns=[key, "captured_at"])
        if match is None:
            chunks.extend(part.column(key).chunks)
        else:
            matched.append(np.flatnonzero(match(part.column(key))) + offsets[-1])
        micros.append(part.column("captured_at").cast(pa.int64()).to_numpy())
        offsets.append(offsets[-1] + part.num_rows)
        del part
    all_micros = np.concatenate(micros) if micros else np.empty(0, np.int64)
    inside = None
    if p.start is not None or p.end is not None:
        lo = -(2**63) if p.start is None else to_micros(p.start)
        hi = 2**63 - 1 if p.end is None else to_micros(p.end)
        inside = np.flatnonzero((all_micros >= lo) & (all_micros < hi))
    if match is not None:
        found = np.concatenate(matched) if matched else np.empty(0, np.int64)
        inside = found if inside is None else np.intersect1d(found, inside, assume_unique=True)
        return _Keys(schema, fragments, np.asarray(offsets), {}, all_micros, inside)
    keys = pa.chunked_array(chunks, type=schema.field(key).type)
    return _Keys(schema, fragments, np.asarray(offsets), {key: keys}, all_micros, inside)


def _gather(archive: Archive, k: _Keys, positions: np.ndarray, columns: list[str]) -> pa.Table:
    """Pass 2: the rows at ``positions`` (sorted), reading only the row groups that hold them."""
    cuts = np.searchsorted(positions, k.bounds)
    pieces = []
    for i, fragment in enumerate(k.fragments):
        local = positions[cuts[i] : cuts[i + 1]] - k.bounds[i]
        if not len(local):
            continue
        sizes = np.array([rg.num_rows for rg in fragment.row_groups], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        group = np.searchsorted(starts, local, side="right") - 1
        needed = np.unique(group)
        if len(needed) < len(sizes):
            fragment = fragment.subset(row_group_ids=needed.tolist())
            sub_starts = np.concatenate([[0], np.cumsum(sizes[needed])])
            local = sub_starts[np.searchsorted(needed, group)] + (local - starts[group])
        part = _fragment_table(archive, fragment, schema=k.schema, columns=columns)
        pieces.append(part.take(local))
        del part
    if not pieces:
        return _select(k.schema, columns).empty_table()
    return pa.concat_tables(pieces)


def _in_time_order(k: _Keys, positions: np.ndarray, result: pa.Table) -> pa.Table:
    """``result`` (rows at sorted ``positions``) ordered by captured_at, stable."""
    micros = k.micros[positions]
    if np.all(np.diff(micros) >= 0):  # the usual case: files do not overlap in time
        return result
    return result.take(np.argsort(micros, kind="stable"))


def _latest_read(archive: Archive, p: Plan, key: str, columns: list[str]) -> pa.Table:
    """Two passes: find the winning rows from the key and time columns, then fetch them."""
    k = _scan_keys(archive, p, key)
    keys = k.columns.pop(key)
    if k.inside is None:
        win = latest_positions(keys, k.micros)
    else:
        win = k.inside[latest_positions(keys.take(k.inside), k.micros[k.inside])]
    del keys
    positions = np.sort(win)
    return _in_time_order(k, positions, _gather(archive, k, positions, columns))


def _history_read(archive: Archive, p: Plan, key: str, value: Any) -> pa.Table:
    def match(keys: pa.ChunkedArray) -> np.ndarray:
        if pa.types.is_dictionary(keys.type):
            keys = keys.cast(keys.type.value_type)
        equal = pc.fill_null(pc.equal(keys, pa.scalar(value, keys.type)), False)
        mask: np.ndarray = equal.to_numpy(zero_copy_only=False).astype(bool, copy=False)
        return mask

    k = _scan_keys(archive, p, key, match)
    # (a match always sets ``inside``; None would mean every row)
    positions = k.inside if k.inside is not None else np.arange(len(k.micros))
    return _in_time_order(k, positions, _gather(archive, k, positions, p.columns))


# ``engine`` decides the type of the result.
@overload
def latest(
    archive: Archive,
    table: str = ...,
    *,
    as_of: Any = ...,
    start: Any = ...,
    columns: Sequence[str] | None = ...,
    filters: Any = ...,
    engine: Literal["pandas"] = ...,
    limit: int | None = ...,
    tail: int | None = ...,
    on_bad_file: OnBadFile | None = ...,
) -> pd.DataFrame: ...


@overload
def latest(
    archive: Archive,
    table: str = ...,
    *,
    as_of: Any = ...,
    start: Any = ...,
    columns: Sequence[str] | None = ...,
    filters: Any = ...,
    engine: Literal["arrow"],
    limit: int | None = ...,
    tail: int | None = ...,
    on_bad_file: OnBadFile | None = ...,
) -> pa.Table: ...


@overload
def latest(
    archive: Archive,
    table: str = ...,
    *,
    as_of: Any = ...,
    start: Any = ...,
    columns: Sequence[str] | None = ...,
    filters: Any = ...,
    engine: Literal["pandas", "arrow"],
    limit: int | None = ...,
    tail: int | None = ...,
    on_bad_file: OnBadFile | None = ...,
) -> pd.DataFrame | pa.Table: ...


def latest(
    archive: Archive,
    table: str = "tasks",
    *,
    as_of: Any = None,
    start: Any = None,
    columns: Sequence[str] | None = None,
    filters: Any = None,
    engine: Engine = "pandas",
    limit: int | None = None,
    tail: int | None = None,
    on_bad_file: OnBadFile | None = None,
) -> pd.DataFrame | pa.Table:
    """The last row of each task (by uuid) or worker (by hostname) as of ``as_of``.

    The cluster as it was at ``as_of`` (inclusive; default: the newest snapshot).
    ``start`` ignores entities not recorded since then; ``filters`` apply to the
    latest rows, so ``state == "FAILURE"`` means "tasks whose last known state is
    FAILURE"; ``engine`` is ``"pandas"`` or ``"arrow"``; the other arguments are as
    :func:`load_table`'s. Rows are ordered by the time of their last version; ties
    are broken by the rule of :mod:`archiver.rows`; ``tail`` gives the newest
    ``tail`` of them, newest first.
    """
    archive = archive.using(on_bad_file)
    _check_limits(limit, tail)
    archive.require()
    archive.require_table(table)
    key = _entity_key(table)
    if _engine(engine) == "dask":
        raise ArchiverError('latest() returns pandas or Arrow: use engine="pandas" or "arrow"')
    as_of_ts = parse_time(as_of)
    # ``as_of`` is inclusive: the cluster as it was at that instant.
    end = None if as_of_ts is None else as_of_ts + pd.Timedelta(microseconds=1)
    p = plan(archive, table, start=start, end=end, columns=columns, filters=None)
    p.user_filter = filters_to_expression(filters, p.schema, table=table)
    wanted = list(p.columns)
    read_cols = wanted
    if p.user_filter is not None:
        extra = expression_columns(p.user_filter, p.schema, table=table)
        read_cols = list(dict.fromkeys([*wanted, *extra]))
    if not p.partitions:
        result = _select(p.schema, wanted).empty_table()
    else:
        with _arrow_errors(table, filters):
            result = retrying(lambda: _latest_read(archive, p, key, read_cols))
            if p.user_filter is not None:
                result = result.filter(p.user_filter).select(wanted)
    if limit is not None:
        result = result.slice(0, limit)
    if tail is not None:
        result = _newest_first(result.slice(max(result.num_rows - tail, 0)))
    if result.num_rows == 0 and limit != 0 and tail != 0:
        warn_empty(archive, p, filters)
    return result if engine == "arrow" else to_pandas(result, owned=True)


# ``engine`` decides the type of the result.
@overload
def history(
    archive: Archive,
    uuid: str,
    *,
    table: str = ...,
    start: Any = ...,
    end: Any = ...,
    columns: Sequence[str] | None = ...,
    engine: Literal["pandas"] = ...,
    on_bad_file: OnBadFile | None = ...,
) -> pd.DataFrame: ...


@overload
def history(
    archive: Archive,
    uuid: str,
    *,
    table: str = ...,
    start: Any = ...,
    end: Any = ...,
    columns: Sequence[str] | None = ...,
    engine: Literal["arrow"],
    on_bad_file: OnBadFile | None = ...,
) -> pa.Table: ...


@overload
def history(
    archive: Archive,
    uuid: str,
    *,
    table: str = ...,
    start: Any = ...,
    end: Any = ...,
    columns: Sequence[str] | None = ...,
    engine: Literal["pandas", "arrow"],
    on_bad_file: OnBadFile | None = ...,
) -> pd.DataFrame | pa.Table: ...


def history(
    archive: Archive,
    uuid: str,
    *,
    table: str = "tasks",
    start: Any = None,
    end: Any = None,
    columns: Sequence[str] | None = None,
    engine: Engine = "pandas",
    on_bad_file: OnBadFile | None = None,
) -> pd.DataFrame | pa.Table:
    """Every recorded version of one task, oldest first.

    With ``table="workers"``, of one worker (``uuid`` is then its hostname); the
    other arguments are as :func:`load_table`'s.
    """
    archive = archive.using(on_bad_file)
    archive.require()
    archive.require_table(table)
    key = _entity_key(table)
    if _engine(engine) == "dask":
        raise ArchiverError('history() returns pandas or Arrow: use engine="pandas" or "arrow"')
    p = plan(archive, table, start=start, end=end, columns=columns)
    if not p.partitions:
        rows = _select(p.schema, p.columns).empty_table()
    else:
        # Two passes: the key column of every row, then only the row groups holding the
        # task (ids have no useful min/max statistics, so one pass would decode everything).
        with _arrow_errors(table, None):
            rows = retrying(lambda: _history_read(archive, p, key, uuid))
    return rows if engine == "arrow" else to_pandas(rows, owned=True)


def _load_dask(
    archive: Archive,
    table: str,
    *,
    start: Any,
    end: Any,
    columns: Sequence[str] | None,
    filters: Any,
) -> dd.DataFrame:
    try:
        import dask.dataframe as dd
    except ImportError as exc:
        raise ArchiverError(
            missing_extra('engine="dask": dask', "dask", "'dask[dataframe]'")
        ) from exc
    p = plan(archive, table, start=start, end=end, columns=columns, filters=filters)
    meta = to_pandas(_select(p.schema, p.columns).empty_table())
    lazy: dd.DataFrame
    if not p.partitions:
        lazy = dd.from_pandas(meta, npartitions=1)
        return lazy

    def read_one(partition: Partition) -> pd.DataFrame:
        with _arrow_errors(table, filters):
            part = archive.read(table, partitions=[partition], columns=p.columns, filter=p.filter)
        return to_pandas(part)

    lazy = dd.from_map(read_one, p.partitions, meta=meta, enforce_metadata=False)
    return lazy


# -- streaming ---------------------------------------------------------------------------
#: Rows per batch of :func:`scan` (bounds the memory of an export, whatever its size).
BATCH_ROWS = 65_536


@dataclass
class Rows:
    """A query's answer as a stream of record batches (see :func:`scan`)."""

    schema: pa.Schema
    batches: Iterator[pa.RecordBatch]


def scan(
    archive: Archive,
    table: str = "tasks",
    *,
    start: Any = None,
    end: Any = None,
    columns: Sequence[str] | None = None,
    filters: Any = None,
    latest_rows: bool = False,
    limit: int | None = None,
    tail: int | None = None,
    on_bad_file: OnBadFile | None = None,
) -> Rows:
    """The rows :func:`load_table` would return, as batches read as they are consumed.

    The arguments are checked (and the partitions pruned) before this returns. A
    plain read streams file by file, oldest first, so memory stays bounded whatever
    the result's size. ``latest_rows`` (:func:`latest` as of ``end``, inclusive) and
    ``tail`` need the whole answer first: they are computed as :func:`latest` and
    :func:`load_table` do, with memory bounded by the number of tasks (latest) or by
    the newest partitions holding ``tail`` rows, and then handed out in batches.
    A damaged file met before any of its rows were handed out is reported and
    skipped as by :func:`load_table`; one failing midway raises ArchiverError.
    """
    archive = archive.using(on_bad_file)
    if latest_rows or tail is not None:
        if latest_rows:
            result = latest(
                archive, table, as_of=end, start=start, columns=columns, filters=filters,
                engine="arrow", limit=limit, tail=tail,
            )  # fmt: skip
        else:
            result = read_arrow(
                archive, table, start=start, end=end, columns=columns, filters=filters,
                tail=tail,
            )  # fmt: skip
        return Rows(result.schema, iter(result.to_batches(max_chunksize=BATCH_ROWS)))
    _check_limits(limit, tail)
    p = plan(archive, table, start=start, end=end, columns=columns, filters=filters)
    return Rows(_select(p.schema, p.columns), _stream(archive, p, filters, limit))


def _stream(archive: Archive, p: Plan, filters: Any, limit: int | None) -> Iterator[pa.RecordBatch]:
    """The batches of the plan's files in order; warns when there are none."""
    left, count = limit, 0
    dataset = archive.dataset(p.table, p.partitions) if p.partitions else None
    fragments = [] if dataset is None else list(dataset.get_fragments())
    for fragment in fragments:
        if left == 0:
            break
        started = False
        try:
            with _arrow_errors(p.table, filters):
                for batch in fragment.to_batches(
                    schema=dataset.schema if dataset else None,
                    columns=p.columns,
                    filter=p.filter,
                    batch_size=BATCH_ROWS,
                ):
                    if left is not None:
                        batch = batch.slice(0, left)
                        left -= batch.num_rows
                    if batch.num_rows:
                        started = True
                        count += batch.num_rows
                        yield batch
                    if left == 0:
                        break
        except ArchiverError as exc:
            cause = exc.__cause__
            if started or not isinstance(cause, (pa.ArrowException, OSError)):
                raise
            if is_missing_file(cause):
                raise ArchiverError(
                    f"a file of {p.table} vanished during the read "
                    "(a concurrent compaction or expiry): read again"
                ) from cause
            archive.mark_bad(fragment.path, cause)
    if count == 0 and limit != 0:
        warn_empty(archive, p, filters)


# -- describing an archive ---------------------------------------------------------------
@dataclass
class TableInfo:
    """What ``archiver info`` shows for one table, from listings and Parquet footers."""

    table: str
    partitions: int = 0
    files: int = 0
    rows: int = 0
    bytes: int = 0
    first: pd.Timestamp | None = None
    last: pd.Timestamp | None = None
    schema_versions: tuple[str, ...] = ()
    #: Damaged files and folders skipped (reported to ``on_bad_file``).
    damaged: int = 0


def describe(
    archive: Archive, tables: Sequence[str] | None = None, *, on_bad_file: OnBadFile | None = None
) -> list[TableInfo]:
    """Partitions, files, rows, bytes, time span and schema versions of each table.

    Rows and times come from the Parquet footers (row counts and ``captured_at``
    statistics); no data page is read. Damaged files and folders are reported to
    ``on_bad_file`` (default: the archive's), skipped and counted in ``damaged``.
    """
    archive.require()
    archive = archive.using(on_bad_file)
    return [
        retrying(functools.partial(_describe_table, archive, table))
        for table in tables or archive.tables()
    ]


def _describe_table(archive: Archive, table: str) -> TableInfo:
    """One table's :class:`TableInfo`; lists and reads again as a whole if a file vanished."""
    info = TableInfo(table)
    damaged: set[str] = set()
    outer = archive

    def count(path: str, reason: str) -> None:
        if path not in damaged:
            damaged.add(path)
            outer.damaged(path, reason)

    archive = archive.using(count)
    parts = archive.partitions(table)
    files = [f for p in parts for f in archive.partition_files(p)]
    info.damaged = len(damaged)
    info.partitions = len(parts)
    info.files = len(files)
    info.bytes = sum(f.size or 0 for f in files)
    versions: set[str] = set()
    lows: list[int] = []
    highs: list[int] = []
    for facts in all_facts(archive.location, files, table):  # cached by partition_files
        if facts is None:
            raise FileNotFoundError("a file vanished: list again")
        info.rows += facts.rows
        if facts.first_us is not None and facts.last_us is not None:  # both or neither
            lows.append(facts.first_us)
            highs.append(facts.last_us)
        versions.add(facts.version or "?")
    if lows:
        info.first = pd.Timestamp(min(lows), unit="us", tz="UTC")
        info.last = pd.Timestamp(max(highs), unit="us", tz="UTC")
    info.schema_versions = tuple(sorted(versions))
    return info


__all__ = [
    "BATCH_ROWS",
    "Rows",
    "TableInfo",
    "describe",
    "explain_empty",
    "filters_to_expression",
    "history",
    "latest",
    "load_table",
    "parse_where",
    "prune",
    "read_arrow",
    "scan",
    "time_expression",
    "to_pandas",
]
