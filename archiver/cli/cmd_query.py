"""``archiver query`` and ``archiver info``."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import click
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..archive import Archive
from ..query import describe, latest, load_table
from ..schema import SCHEMA_VERSION
from ..storage import redact_uri
from .output import archive_option, format_table, human_bytes, run_library_call

_WHERE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(!=|>=|<=|==|=|>|<)\s*(.*?)\s*$", re.S)
#: Longest cell shown by ``--format table`` (longer text is cut with an ellipsis).
MAX_CELL = 60


def parse_where(conditions: tuple[str, ...]) -> list[tuple[str, str, Any]]:
    """``("name=tasks.add", "state=FAILURE,RETRY", "runtime>1")`` -> read_parquet-style filters.

    ``=``/``!=`` with a comma-separated list mean "in"/"not in"; the value ``null``
    with ``=``/``!=`` tests for a missing value. Values are converted to the column's
    type by the query layer (times accept ISO strings and durations such as ``2h``).
    """
    filters: list[tuple[str, str, Any]] = []
    for text in conditions:
        match = _WHERE.match(text)
        if not match:
            raise click.ClickException(
                f"cannot read --where {text!r}: use COLUMN OP VALUE with OP one of "
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


def _columns(text: str | None) -> list[str] | None:
    if text is None:
        return None
    columns = [c.strip() for c in text.split(",") if c.strip()]
    if not columns:
        raise click.ClickException("--columns needs at least one column name")
    return columns


def _cell(value: Any) -> str:
    if value is None or value is pd.NaT:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, pd.Timestamp):
        return value.tz_convert("UTC").strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) and pd.isna(value):
        return ""
    text = str(value).replace("\r", "").replace("\n", "\\n")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def render(table: pa.Table, fmt: str) -> str:
    """``table`` as text: an aligned ``table`` (times UTC), ``csv`` or ``json`` (records)."""
    from ..query import to_pandas

    df = to_pandas(table)
    for name in table.column_names:  # lists (loadavg) as JSON arrays, not numpy reprs
        if pa.types.is_list(table.schema.field(name).type) and fmt != "json":
            df[name] = df[name].map(lambda v: None if v is None else json.dumps(list(v)))
    if fmt == "csv":
        return df.to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ")
    if fmt == "json":
        return df.to_json(orient="records", date_format="iso", date_unit="us") + "\n"
    rows = [[_cell(v) for v in row] for row in df.itertuples(index=False, name=None)]
    return format_table(list(df.columns), rows) + "\n"


@click.command("query")
@click.argument("table")
@archive_option()
@click.option("--since", metavar="TIME", help="Rows captured at or after TIME (ISO, or 2h/7d ago).")
@click.option("--until", metavar="TIME", help="Rows captured before TIME (with --latest: as of).")
@click.option(
    "--where",
    "where",
    multiple=True,
    metavar="COND",
    help="COLUMN OP VALUE, OP one of = != > < >= <=; a,b,c after = or != is a list; "
    "null tests for missing. Repeat to AND them.",
)
@click.option("--columns", metavar="A,B", help="Only these columns (comma-separated).")
@click.option(
    "--latest",
    "only_latest",
    is_flag=True,
    help="Only the last row of each task (tasks) or worker (workers): the cluster as of --until.",
)
@click.option("--limit", type=click.IntRange(min=0), help="At most N rows (oldest first).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json", "parquet"]),
    default="table",
    show_default=True,
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Write to FILE instead of stdout (needed for parquet).",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Fail on a damaged file or folder instead of skipping it with a warning.",
)
def query_command(
    table: str,
    archive: str,
    since: str | None,
    until: str | None,
    where: tuple[str, ...],
    columns: str | None,
    only_latest: bool,
    limit: int | None,
    fmt: str,
    output: str | None,
    strict: bool,
) -> None:
    """Print rows of TABLE (tasks, workers, snapshots) from the archive.

    \b
    Example:
        archiver query tasks --since 2h --where state=FAILURE --columns uuid,name,exception
        archiver query tasks --latest --where name=tasks.add,tasks.mul --format csv
        archiver query workers --latest --until 2026-11-25T15:58 --columns hostname,alive
        archiver query tasks --where "runtime>=1.5" --format parquet --output slow.parquet
    """
    if fmt == "parquet" and output in (None, "-"):
        raise click.ClickException("--format parquet needs --output FILE")
    filters = parse_where(where) or None
    cols = _columns(columns)
    store = Archive(archive, on_bad_file="raise" if strict else "warn")
    if only_latest:
        result = run_library_call(
            latest,
            store,
            table,
            as_of=until,
            start=since,
            columns=cols,
            filters=filters,
            engine="arrow",
            limit=limit,
        )
    else:
        result = run_library_call(
            load_table,
            store,
            table,
            start=since,
            end=until,
            columns=cols,
            filters=filters,
            engine="arrow",
            limit=limit,
        )
    if fmt == "parquet":
        try:
            pq.write_table(result, output, compression="zstd", write_page_checksum=True)
        except OSError as exc:
            raise click.ClickException(f"cannot write {output}: {exc}") from exc
        click.echo(f"Wrote {result.num_rows:,} rows to {output}", err=True)
        return
    text = render(result, fmt)
    if output in (None, "-"):
        click.echo(text, nl=False)
        return
    try:
        with open(output, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc}") from exc
    click.echo(f"Wrote {result.num_rows:,} rows to {output}", err=True)


def _time(ts: pd.Timestamp | None) -> str:
    return "" if ts is None else ts.strftime("%Y-%m-%d %H:%M:%S")


@click.command("info")
@archive_option()
def info_command(archive: str) -> None:
    """Tables, partitions, files, rows, bytes on disk, time span and schema versions.

    Row counts and times come from the Parquet footers: nothing else is read.

    \b
    Example:
        archiver info --archive data/archive
    """
    store = Archive(archive)
    infos = run_library_call(describe, store)
    click.echo(f"archive: {store.uri} (current schema version {SCHEMA_VERSION}; times UTC)")
    if not infos:
        click.echo("no tables yet")
        return
    rows = [
        [
            i.table,
            f"{i.partitions:,}",
            f"{i.files:,}",
            f"{i.rows:,}",
            f"{i.bytes:,}",
            human_bytes(i.bytes),
            _time(i.first),
            _time(i.last),
            ", ".join(f"v{v}" for v in i.schema_versions),
        ]
        for i in infos
    ]
    headers = ["table", "partitions", "files", "rows", "bytes", "size", "first", "last", "schema"]
    click.echo(format_table(headers, rows))
    total_bytes = sum(i.bytes for i in infos)
    click.echo(
        f"total: {sum(i.files for i in infos):,} files, {sum(i.rows for i in infos):,} rows, "
        f"{human_bytes(total_bytes)} on disk"
    )
    damaged = sum(i.damaged for i in infos)
    if damaged:
        shown = redact_uri(archive)
        click.echo(
            f"{damaged} damaged files or folders skipped: see `archiver check --archive {shown}`"
        )


COMMANDS = [query_command, info_command]
