"""``archiver query`` and ``archiver info``."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import IO, Any

import click
import numpy as np
import pandas as pd
import pyarrow as pa

from ..archive import Archive
from ..errors import EmptyResultWarning, one_line
from ..export import FORMATS, format_of, write
from ..query import Rows, describe, scan, to_pandas
from ..schema import SCHEMA_VERSION
from ..storage import redact_uri
from .output import (
    archive_option,
    fit_widths,
    format_table,
    human_bytes,
    natural_widths,
    run_library_call,
    table_lines,
    terminal_width,
)

#: Longest cell shown by ``--format table`` (longer text is cut with an ellipsis).
MAX_CELL = 60
#: Rows whose cells set the column widths of ``--format table`` (a first screenful,
#: printed as soon as it is read; later rows are cut to the same widths).
SCREENFUL = 200
#: The columns ``--format table`` shows without ``--columns`` (``--columns all``: every one).
DEFAULT_COLUMNS = {
    "tasks": [
        "captured_at", "uuid", "name", "state", "worker", "retries", "runtime", "exception"
    ],
    "workers": [
        "hostname", "captured_at", "alive", "active", "processed", "freq", "last_heartbeat",
        "loadavg",
    ],
    "snapshots": [
        "captured_at", "event_count", "task_count", "worker_count", "alive_workers",
        "tasks_pending", "tasks_started", "tasks_success", "tasks_failure", "tasks_retry",
    ],
}  # fmt: skip


def _columns(text: str | None, table: str, fmt: str) -> list[str] | None:
    """``--columns``: None (all) for exports and ``all``; the table's default set on screen."""
    if text is None:
        return DEFAULT_COLUMNS.get(table) if fmt == "table" else None
    columns = [c.strip() for c in text.split(",") if c.strip()]
    if not columns:
        raise click.UsageError("--columns needs at least one column name (or all)")
    return None if columns == ["all"] else columns


def _cell(value: Any) -> str:
    if value is None or value is pd.NaT:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, pd.Timestamp):
        utc = value if value.tzinfo is None else value.tz_convert("UTC")  # SQL: maybe naive
        return utc.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(value, np.ndarray):
        return json.dumps(value.tolist())
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    if pd.isna(value):
        return ""
    return str(value)


def _cells(batch: pa.RecordBatch) -> list[list[str]]:
    df = to_pandas(pa.Table.from_batches([batch]), owned=True)
    return [[_cell(v) for v in row] for row in df.itertuples(index=False, name=None)]


def write_table(rows: Rows, out: IO[str], width: int | None) -> int:
    """``rows`` as an aligned text table (times UTC) ending with a row count line.

    The first screenful sets the column widths (capped at MAX_CELL, narrowed to
    ``width``) and is printed at once; the rest follows batch by batch.
    """
    headers = rows.schema.names
    batches = iter(rows.batches)
    first: list[list[str]] = []
    rest: list[pa.RecordBatch] = []  # the part of the last batch read beyond the screenful
    for batch in batches:
        need = SCREENFUL - len(first)
        first.extend(_cells(batch.slice(0, need)))
        if batch.num_rows > need:
            rest.append(batch.slice(need))
        if len(first) >= SCREENFUL:
            break
    widths = [min(w, MAX_CELL) for w in natural_widths(headers, first)]
    widths = fit_widths(widths, width)
    out.write("\n".join(table_lines(headers, first, widths)) + "\n")
    out.flush()
    count = len(first)
    for batch in itertools.chain(rest, batches):
        if batch.num_rows:
            lines = table_lines(headers, _cells(batch), widths)[2:]
            out.write("\n".join(lines) + "\n")
            count += batch.num_rows
    out.write(f"{count:,} row{'' if count == 1 else 's'}\n")
    return count


@contextlib.contextmanager
def _notes() -> Iterator[None]:
    """An empty answer's explanation as a ``Note:`` line on stderr (the exit code stays 0)."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EmptyResultWarning)
            yield
    finally:  # outside the block, so that warnings passed on are not recorded again
        for w in caught:
            if issubclass(w.category, EmptyResultWarning):
                click.echo(f"Note: {w.message}", err=True)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _write(rows: Rows, fmt: str, output: str | None) -> int:
    """Write ``rows`` to ``output`` (stdout for None or ``-``); a partial file is removed."""
    if output in (None, "-"):
        if fmt == "table":
            return write_table(rows, sys.stdout, terminal_width())
        stream = sys.stdout.buffer
        count = write(rows, fmt, stream)
        stream.flush()
        return count
    try:
        if fmt == "table":
            with open(output, "w", encoding="utf-8") as text:
                return write_table(rows, text, None)
        with open(output, "wb") as binary:
            return write(rows, fmt, binary)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(output)
        if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
            raise click.ClickException(f"cannot write {output}: {one_line(exc)}") from exc
        raise


def _quiet_broken_pipe() -> None:
    """The reader went away (``| head``): stop without a traceback, as ``cat`` does."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's final flush must not fail again


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
    "null tests for missing; state in any case. Repeat to AND them.",
)
@click.option(
    "--columns",
    metavar="A,B",
    help="Only these columns (comma-separated); all: every column. "
    "Default: all for exports, a short set per table on screen.",
)
@click.option(
    "--latest",
    "only_latest",
    is_flag=True,
    help="Only the last row of each task (tasks) or worker (workers): the cluster as of --until.",
)
@click.option("--limit", type=click.IntRange(min=0), help="At most N rows (oldest first).")
@click.option("--tail", type=click.IntRange(min=0), help="The newest N rows, newest first.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", *FORMATS]),
    help="Default: from the --output extension (.csv, .json, .ndjson/.jsonl, .parquet), "
    "else table.",
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
    tail: int | None,
    fmt: str | None,
    output: str | None,
    strict: bool,
) -> None:
    """Print rows of TABLE (tasks, workers, snapshots) from the archive.

    An empty answer is explained by a Note: line on stderr (exit code 0).
    csv, json, ndjson and parquet are written batch by batch (memory stays bounded);
    --latest and --tail compute their rows first.

    \b
    Example:
        archiver query tasks --where state=FAILURE --columns uuid,name,exception
        archiver query tasks --tail 20
        archiver query tasks --latest --where name=harness.add,harness.echo -o latest.csv
        archiver query workers --latest --until 2026-11-25T15:58 --columns hostname,alive
        archiver query tasks --where "runtime>=0.25" --output slow.parquet
    """
    if limit is not None and tail is not None:
        raise click.UsageError(
            "--limit (the oldest rows) and --tail (the newest) exclude each other"
        )
    store = Archive(archive, on_bad_file="raise" if strict else "warn")
    cols = _columns(columns, table, fmt or format_of(output) or "table")
    write_rows(
        lambda: scan(
            store, table, start=since, end=until, columns=cols, filters=list(where),
            latest_rows=only_latest, limit=limit, tail=tail,
        ),
        fmt,
        output,
        store,
    )  # fmt: skip


def _refuse_output_inside(output: str, store: Archive) -> None:
    """An export written into a local archive would be read back as its rows: refuse it."""
    if not store.location.local:
        return
    root = os.path.realpath(store.location.root)
    if os.path.commonpath([root, os.path.realpath(output)]) == root:
        raise click.ClickException(f"cannot write {output}: it is inside the archive {store.uri}")


def write_rows(
    answer: Callable[[], Rows], fmt: str | None, output: str | None, store: Archive
) -> None:
    """Write the (lazy) rows ``answer()`` gives (read from ``store``) in ``fmt`` (default:
    from ``output``'s extension, else table).

    Empty answers are explained on stderr; a closed pipe stops quietly.
    """
    fmt = fmt or format_of(output) or "table"
    if fmt == "parquet" and output in (None, "-"):
        raise click.UsageError("--format parquet needs --output FILE")
    if output not in (None, "-"):
        _refuse_output_inside(output, store)
    try:
        with _notes():
            count = run_library_call(lambda: _write(answer(), fmt, output))
    except BrokenPipeError:
        _quiet_broken_pipe()
        return
    if output not in (None, "-"):
        click.echo(f"Wrote {count:,} rows to {output}", err=True)


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
