"""Writing a query's batches as CSV, JSON, newline-delimited JSON or Parquet, batch by batch.

Each batch is written and dropped before the next is read, so an export's memory is
bounded by a batch (:data:`archiver.query.BATCH_ROWS` rows), not by the result. The
writers are pyarrow's (CSV, Parquet) and the standard library's (JSON, which pyarrow
does not write).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import PurePath
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .errors import ArchiverError
from .query import Rows

FORMATS = ("csv", "json", "ndjson", "parquet")
#: The format an output file's name asks for.
SUFFIXES = {
    ".csv": "csv",
    ".json": "json",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".parquet": "parquet",
}


def format_of(path: str | None) -> str | None:
    """The export format that ``path``'s extension names (``out.jsonl`` -> ndjson), or None."""
    if not path or path == "-":
        return None
    return SUFFIXES.get(PurePath(path).suffix.lower())


def write(rows: Rows, fmt: str, sink: BinaryIO) -> int:
    """Write ``rows`` to the binary stream ``sink`` as ``fmt``; returns the number of rows.

    CSV: a header line, times in ISO 8601 (UTC, ``Z``), lists as JSON arrays.
    JSON: one array of records; ndjson: one record per line; both keep non-ASCII text
    and write times in ISO 8601. Parquet: zstd with page checksums, the Arrow types kept.
    """
    if fmt == "csv":
        return _write_csv(rows, sink)
    if fmt in ("json", "ndjson"):
        return _write_json(rows, sink, lines=fmt == "ndjson")
    if fmt == "parquet":
        return _write_parquet(rows, sink)
    raise ArchiverError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")


def exportable(table: pa.Table) -> pa.Table:
    """``table`` with the columns no writer takes (unions and intervals, which only an SQL
    answer has) as text."""
    for i, field in enumerate(table.schema):
        if pa.types.is_union(field.type) or pa.types.is_interval(field.type):
            values = [None if v is None else str(v) for v in table.column(i).to_pylist()]
            text = pa.array(values, pa.string())
            table = table.set_column(i, pa.field(field.name, pa.string()), text)
    return table


def _jsonable(value: object) -> object:
    """What JSON has no type for (bytes, decimals, dates, times of an SQL answer) as text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def _csv_ready(batch: pa.RecordBatch, *, lists: bool = True) -> pa.RecordBatch:
    """``batch`` with the columns CSV cannot hold as they are turned into text.

    Times: ISO 8601 in UTC with a ``Z`` (``2026-11-25T15:57:41.068105Z``), made from
    the tz-naive cast, which is ~15x faster than pyarrow's own tz-aware formatting (the
    bulk of an export's time otherwise). Lists (a worker's ``loadavg``), and the structs
    and maps of an SQL answer (with ``lists``): JSON, by hand since pyarrow has no
    cast to JSON (only the small workers table has a list).
    """
    arrays = list(batch.columns)
    fields = list(batch.schema)
    for i, field in enumerate(fields):
        type_ = field.type
        if pa.types.is_timestamp(type_):
            naive = arrays[i].cast(pa.timestamp(type_.unit)).cast(pa.string())
            iso = pc.replace_substring(naive, " ", "T", max_replacements=1)
            arrays[i] = pc.binary_join_element_wise(iso, "Z" if type_.tz else "", "")
        elif lists and pa.types.is_nested(type_):  # lists, structs, maps
            values = [
                None if v is None else json.dumps(v, ensure_ascii=False, default=_jsonable)
                for v in arrays[i].to_pylist()
            ]
            arrays[i] = pa.array(values, pa.string())
        else:
            continue
        fields[i] = pa.field(field.name, pa.string())
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def _write_csv(rows: Rows, sink: BinaryIO) -> int:
    schema = _csv_ready(pa.RecordBatch.from_pylist([], schema=rows.schema)).schema
    count = 0
    with pacsv.CSVWriter(sink, schema) as writer:
        for batch in rows.batches:
            writer.write_batch(_csv_ready(batch))
            count += batch.num_rows
    return count


#: Rows turned into Python objects at a time by the JSON writers.
JSON_ROWS = 8192


def _slices(batches: Iterable[pa.RecordBatch], size: int) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        for offset in range(0, batch.num_rows, size):
            yield batch.slice(offset, size)


def _write_json(rows: Rows, sink: BinaryIO, *, lines: bool) -> int:
    # json.dumps per row, not pandas.to_json: that rounds floats to 10-15 digits, this
    # writes each float's shortest exact form, so values read back are the ones stored.
    # Times are turned into text by Arrow first (as for CSV), which is faster than
    # formatting Python datetimes; slices of JSON_ROWS bound the Python objects alive.
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_jsonable).encode
    count = 0
    if not lines:
        sink.write(b"[")
    for batch in _slices(rows.batches, JSON_ROWS):
        records = [encode(r) for r in _csv_ready(batch, lists=False).to_pylist()]
        text = ("\n" if lines else ",\n").join(records)
        text = text + "\n" if lines else (",\n" if count else "") + text
        sink.write(text.encode("utf-8"))
        count += batch.num_rows
    if not lines:
        sink.write(b"]\n")
    return count


def _write_parquet(rows: Rows, sink: BinaryIO) -> int:
    count = 0
    with pq.ParquetWriter(sink, rows.schema, compression="zstd", write_page_checksum=True) as w:
        for batch in rows.batches:
            w.write_batch(batch)
            count += batch.num_rows
    return count


__all__ = ["FORMATS", "SUFFIXES", "exportable", "format_of", "write"]
