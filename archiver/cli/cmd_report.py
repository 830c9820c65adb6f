"""``archiver report``: a window of the archive as one self-contained HTML page."""

from __future__ import annotations

import click

from ..timeparse import TIME_HELP
from .output import archive_option, run_library_call


def _concurrency(values: tuple[str, ...]) -> int | dict[str, int] | None:
    """``("8",)`` -> 8; ``("w1@host=4", "w2@host=8")`` -> a dict per hostname."""
    if not values:
        return None
    sizes: dict[str, int] = {}
    for value in values:
        host, _, size = value.rpartition("=")
        try:
            number = int(size)
        except ValueError:
            number = 0
        if number < 1:
            raise click.BadParameter(
                f"{value!r}: give a pool size (8) or HOSTNAME=SIZE (w1@host=8)",
                param_hint="--concurrency",
            )
        if not host:
            if len(values) > 1:
                raise click.BadParameter(
                    "give one size for all workers, or HOSTNAME=SIZE for each",
                    param_hint="--concurrency",
                )
            return number
        sizes[host] = number
    return sizes


@click.command("report")
@archive_option()
@click.option("--since", "start", help=f"Start of the window; {TIME_HELP}.")
@click.option("--until", "end", help=f"End of the window (excluded); {TIME_HELP}.")
@click.option("--name", "name", metavar="PATTERN", help="Only task names matching this glob.")
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, writable=True),
    help="The HTML file to write.",
)
@click.option("--top", default=8, show_default=True, type=click.IntRange(1, 40),
              help="Task names and workers shown one by one; the rest are grouped.")  # fmt: skip
@click.option("--freq", help="Interval of the charts over time (1min, 1h...); default: auto.")
@click.option(
    "--concurrency",
    multiple=True,
    metavar="N|HOST=N",
    help="Worker pool size, for a 0-1 utilisation (repeat HOST=N per worker).",
)
@click.option("--title", help="The page's title.")
def report_command(
    start: str | None,
    end: str | None,
    name: str | None,
    output: str,
    top: int,
    freq: str | None,
    concurrency: tuple[str, ...],
    title: str | None,
    archive: str,
) -> None:
    """Write a self-contained HTML report of the archive's history.

    \b
    Example:
        archiver report --archive data/archive --output report.html
        archiver report --since 2026-11-25T15:57:50 --name 'harness.*' --output late.html
    """
    from ..report import report

    if freq is not None:
        import pandas as pd

        try:
            pd.Timedelta(freq)
        except ValueError as exc:
            raise click.BadParameter(f"{freq!r} is not an interval (1min, 1h)") from exc
    run_library_call(
        report,
        archive,
        start,
        end,
        output=output,
        title=title,
        name=name,
        top=top,
        freq=freq,
        concurrency=_concurrency(concurrency),
    )
    click.echo(f"wrote {output}", err=True)


COMMANDS = [report_command]
