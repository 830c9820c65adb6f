"""``archiver files`` and ``archiver sql``: exact access for other engines."""

from __future__ import annotations

import time

import click
import pyarrow as pa

from ..archive import Archive
from ..errors import ArchiverError, one_line
from ..listing import READ_RETRIES, is_missing_file
from .cmd_query import render
from .output import archive_option, run_library_call


def run_sql(archive: Archive, query: str) -> pa.Table:
    """The result of ``query`` over :meth:`Archive.duckdb`'s views, as an Arrow table.

    Listed again and run again when a file vanished mid-query (a concurrent cleanup):
    DuckDB's error is not an OSError, so :func:`archiver.listing.retrying` does not apply.
    """
    archive.require()
    for attempt in range(1, READ_RETRIES + 1):
        con = archive.duckdb()
        try:
            relation = con.sql(query)
            return pa.table({}) if relation is None else relation.to_arrow_table()
        except Exception as exc:  # duckdb.Error has no common OSError base
            if is_missing_file(exc) and attempt < READ_RETRIES:
                time.sleep(0.01 * attempt)
                continue
            raise ArchiverError(f"SQL failed: {one_line(exc)}") from exc
        finally:
            con.close()
    raise AssertionError("unreachable")


@click.command("files")
@click.argument("table")
@archive_option()
def files_command(table: str, archive: str) -> None:
    """Print exactly the files archiver reads for TABLE, one per line.

    \b
    Example:
        archiver files tasks > tasks.txt
        python -c "import polars as pl; pl.scan_parquet(open('tasks.txt').read().split())"
    """
    arch = Archive(archive)
    run_library_call(arch.require_table, table)
    for uri in run_library_call(arch.files, table):
        click.echo(uri)


@click.command("sql")
@click.argument("query")
@archive_option()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
def sql_command(query: str, archive: str, fmt: str) -> None:
    """Run a DuckDB QUERY over one view per table (exactly the rows `archiver query` reads).

    Views: every table of the archive by its name, with `date` (DATE) and `hour`
    (INTEGER). Needs DuckDB: pip install 'archiver[report]'.

    \b
    Example:
        archiver sql "SELECT state, count(*) AS n FROM tasks GROUP BY state ORDER BY n DESC"
    """
    result = run_library_call(run_sql, Archive(archive), query)
    click.echo(render(result, fmt), nl=False)


COMMANDS = [files_command, sql_command]
