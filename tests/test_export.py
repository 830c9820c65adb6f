"""``archiver.export``: every Arrow type a query or ``archiver sql`` can give is written."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from archiver.cli import cli

from .helpers import record_copies

#: One column of each type DuckDB gives that CSV or JSON cannot hold as it is.
ODD_TYPES = (
    "SELECT [1, 2] AS l, {'a': 1} AS s, 'x'::BLOB AS b, INTERVAL 1 DAY AS i, "
    "MAP {'k': 1} AS m, [{'x': 1}] AS ls, union_value(num := 2) AS un, "
    "[1, 2]::INTEGER[2] AS arr, 1.5::DECIMAL(10, 2) AS dec, DATE '2026-01-01' AS d, "
    "TIME '10:00' AS t, TIMESTAMP '2026-01-01 10:00' AS naive, 'ü' AS text, "
    "count(*) AS n FROM tasks"
)


@pytest.fixture(scope="module")
def archive(tmp_path_factory, small_events) -> Path:
    path = tmp_path_factory.mktemp("export") / "archive"
    record_copies(path, [small_events])
    return path


@pytest.mark.parametrize("fmt", ["csv", "json", "ndjson", "parquet", "table"])
def test_sql_answers_of_any_type_are_exported(archive, tmp_path, fmt):
    """Lists, structs, maps, unions, blobs, intervals, decimals: written, no traceback."""
    out = tmp_path / f"out.{fmt}"
    result = CliRunner().invoke(
        cli, ["sql", ODD_TYPES, "--archive", str(archive), "--format", fmt, "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    text = out.read_bytes()
    if fmt == "csv":
        (row,) = list(csv.DictReader(io.StringIO(text.decode())))
        assert json.loads(row["l"]) == [1, 2] and json.loads(row["s"]) == {"a": 1}
        assert json.loads(row["ls"]) == [{"x": 1}] and row["text"] == "ü"
    elif fmt in ("json", "ndjson"):
        record = json.loads(text)[0] if fmt == "json" else json.loads(text.splitlines()[0])
        assert record["l"] == [1, 2] and record["s"] == {"a": 1} and record["b"] == "x"
        assert record["dec"] == "1.50" and record["d"] == "2026-01-01" and record["text"] == "ü"
    elif fmt == "parquet":
        assert pq.read_table(out).num_rows == 1
    else:
        assert "2026-01-01 10:00:00.000" in text.decode()
