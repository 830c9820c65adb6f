"""``archiver check``: read every file, report damage, optionally move it aside."""

from __future__ import annotations

import json
import sys

import click

from ..archive import Archive
from ..check import check
from .output import archive_option, run_library_call


@click.command("check")
@archive_option()
@click.option(
    "--quarantine",
    is_flag=True,
    help="Move damaged files and folders aside into <archive>/_quarantine (readers ignore it).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check_command(archive: str, quarantine: bool, as_json: bool) -> None:
    """Read every file of the archive fully (verifying page checksums) and report damage.

    Checks that each file reads, fits its table's schema, and that every folder is a
    valid date=YYYY-MM-DD/hour=H partition. Prints one line per problem and exits 1
    if there is any.

    \b
    Example:
        archiver check --archive data/archive
        archiver check --archive data/archive --quarantine
    """
    report = run_library_call(check, Archive(archive), quarantine=quarantine)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for p in report.problems:
            moved = f" (moved to {p.moved_to})" if p.moved_to else ""
            click.echo(f"{p.path}: {p.reason}{moved}")
        click.echo(
            f"Checked {report.tables} tables, {report.files:,} files, {report.rows:,} rows: "
            + ("no problems." if report.ok else f"{len(report.problems)} problems."),
            err=not report.ok,
        )
    if not report.ok:
        sys.exit(1)


COMMANDS = [check_command]
