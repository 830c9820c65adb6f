"""``archiver files`` and ``archiver sql``: exact access for other engines."""

from __future__ import annotations

import click

from ..archive import Archive
from ..export import FORMATS, exportable
from ..query import Rows
from .cmd_query import write_rows
from .output import archive_option, escape, run_library_call


@click.command("files")
@click.argument("table")
@archive_option()
def files_command(table: str, archive: str) -> None:
    """Print exactly the files archiver reads for TABLE, one per line.

    \b
    Example:
        archiver files tasks > tasks.txt
        python -c "import polars as pl; print(pl.read_parquet(open('tasks.txt').read().split()))"
    """
    uris = run_library_call(Archive(archive).files, table)
    for uri in uris:  # one per line: a name with a line break would be read as two
        if "\n" in uri or "\r" in uri:
            raise click.ClickException(
                f"cannot list {escape(uri)}: its name holds a line break (rename it)"
            )
    for uri in uris:
        click.echo(uri)


@click.command("sql")
@click.argument("query")
@archive_option()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", *FORMATS]),
    help="Default: from the --output extension, else table.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Write to FILE instead of stdout (needed for parquet).",
)
def sql_command(query: str, archive: str, fmt: str | None, output: str | None) -> None:
    """Run a DuckDB QUERY over one view per table (exactly the rows `archiver query` reads).

    Views: every table of the archive by its name, with `date` (DATE) and `hour`
    (INTEGER). Needs DuckDB (the report extra).

    \b
    Example:
        archiver sql "SELECT state, count(*) AS n FROM tasks GROUP BY state ORDER BY n DESC"
    """

    store = Archive(archive)

    def answer() -> Rows:
        result = exportable(store.sql(query))
        return Rows(result.schema, iter(result.to_batches()))

    write_rows(answer, fmt, output, store)


COMMANDS = [files_command, sql_command]
