"""``archiver compact``, ``archiver expire`` and ``archiver cleanup``: archive maintenance."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar, cast

import click

from .. import maintenance
from ..maintenance import CompactionReport, ExpiryReport, Keep
from .output import (
    archive_option,
    checked_by,
    checked_duration,
    echo_table,
    human_bytes,
    is_terminal,
    run_library_call,
)

P = ParamSpec("P")
T = TypeVar("T")


def cleanup_call(fun: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """:func:`run_library_call`, with the lock's message naming ``--wait`` (the library
    names its parameter, ``lock_timeout``)."""
    try:
        return run_library_call(fun, *args, **kwargs)
    except click.ClickException as exc:
        message = exc.message.replace("(lock_timeout)", "(--wait SECONDS)")
        raise click.ClickException(message) from exc.__cause__


wait_option = click.option(
    "--wait",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    default=maintenance.DEFAULT_LOCK_TIMEOUT,
    show_default=True,
    help="Seconds to wait for another cleanup of the archive to finish.",
)
table_option = click.option(
    "--table",
    "tables",
    multiple=True,
    metavar="TABLE",
    help="Only this table (repeatable; default: all).",
)
keep_option = click.option(
    "--keep",
    type=click.Choice(["all", "latest"]),
    default=None,
    help="latest: keep only the last row of each task/worker per hour.  [default: all]",
)
target_option = click.option(
    "--target-size",
    default=None,
    metavar="SIZE",
    help="Size of the compacted files, e.g. 64MiB.  [default: 128MiB]",
)
state_option = click.option(
    "--state",
    "states",
    multiple=True,
    metavar="STATE=DURATION",
    help="Delete tasks whose last row is in STATE and older than DURATION (repeatable).",
)
older_option = click.option(
    "--older-than",
    metavar="DURATION",
    callback=checked_duration,
    help="Delete whole hours that ended longer ago than this, e.g. 30d.",
)
now_option = click.option(
    "--now",
    metavar="TIME",
    help="Measure ages from this time (ISO) instead of the current time.",
)
before_option = click.option(
    "--before",
    metavar="TIME",
    help="Only compact hours that ended by then: an ISO time or a duration ago (2h).  "
    "[default: now]",
)


checked_grace = checked_by(lambda value, _flag: maintenance.parse_grace(value))


grace_option = click.option(
    "--grace",
    metavar="DURATION",
    default=None,
    callback=checked_grace,
    help="Keep each merged group's old files this long, for other engines reading a list "
    "from `archiver files` meanwhile, e.g. 2s or 500ms (each changed hour then waits it "
    "out).  [default: 0]",
)
yes_option = click.option("--yes", is_flag=True, help="Really delete rows (else: show the plan).")
dry_run_option = click.option("--dry-run", is_flag=True, help="Change nothing; show the plan.")
#: The last line of a run that would have deleted rows without --yes.
NOT_APPLIED = "Nothing was changed: pass --yes to apply."


# -- output --------------------------------------------------------------------
def human_duration(delta: Any) -> str:
    """``1d``, ``12h``, ``90m`` or ``1d 12h``."""
    seconds = int(delta.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts) or "0s"


def echo_skipped(skipped: tuple[tuple[str, str], ...]) -> None:
    """One line per damaged file or folder a run left alone."""
    for path, reason in skipped:
        click.echo(f"Skipped {path}: {reason}")
    if skipped:
        click.echo(f"{len(skipped)} damaged files or folders skipped: see `archiver check`.")


def echo_compaction(report: CompactionReport) -> None:
    echo_skipped(report.skipped)
    if report.recovered or report.temps_removed:
        click.echo(
            f"Finished an interrupted cleanup: removed {report.recovered} leftover files "
            f"and {report.temps_removed} stale temporary files."
        )
    if not report.partitions:
        click.echo("Nothing to compact: every closed hour is already compacted.")
        return
    echo_table(
        ["table", "hour", "files in", "files out", "rows in", "rows out", "bytes in", "bytes out"],
        [
            [
                p.table,
                f"{p.date} {p.hour:02d}:00",
                p.files_in,
                p.files_out,
                p.rows_in,
                p.rows_out,
                human_bytes(p.bytes_in),
                human_bytes(p.bytes_out),
            ]
            for p in report.partitions
        ],
    )
    if report.dry_run:
        click.echo(
            f"Dry run: would compact {len(report.partitions)} hours, {report.files_in} files "
            f"into at most {report.files_out} ({report.rows} rows, {human_bytes(report.bytes_in)})."
        )
    else:
        click.echo(
            f"Compacted {len(report.partitions)} hours: {report.files_in} -> {report.files_out} "
            f"files, {report.rows} rows, {human_bytes(report.bytes_in)} -> "
            f"{human_bytes(report.bytes_out)} in {report.seconds:.2f}s."
        )


def echo_expiry(report: ExpiryReport) -> None:
    echo_skipped(report.skipped)
    if report.partitions:
        echo_table(
            ["table", "hour", "files", "rows", "bytes"],
            [
                [p.table, f"{p.date} {p.hour:02d}:00", p.files, p.rows, human_bytes(p.bytes)]
                for p in report.partitions
            ],
        )
    if report.states:
        if report.partitions:
            click.echo()
        echo_table(
            ["state", "retention", "tasks", "rows"],
            [[s.state, human_duration(s.retention), s.tasks, s.rows] for s in report.states],
        )
    if not report.partitions and not report.states:
        click.echo(f"Nothing to expire as of {report.now:%Y-%m-%d %H:%M:%S} UTC.")
        return
    what = (
        f"{len(report.partitions)} hours ({report.files} files) and {len(report.uuids)} tasks, "
        f"{report.rows} rows"
    )
    if report.dry_run:
        click.echo(f"Dry run: would delete {what}.")
    else:
        click.echo(f"Deleted {what} in {report.seconds:.2f}s.")


def echo_outcome(changes: bool, *, dry_run: bool, yes: bool) -> None:
    """The last line of a run that needed --yes for the ``changes`` it planned.

    A run asked to be dry (``--dry-run``, with or without ``--yes``) already said so.
    """
    if changes and not dry_run and not yes:
        click.echo(NOT_APPLIED)


def _expiry_changes(report: ExpiryReport | None) -> bool:
    return report is not None and bool(report.partitions or report.states)


def _compaction_changes(report: CompactionReport | None) -> bool:
    return report is not None and bool(report.partitions)


@contextmanager
def progress_bar(label: str) -> Iterator[maintenance.ProgressCallback | None]:
    """A ``progress(done, total)`` callback drawing a bar, on a terminal only."""
    if not is_terminal():
        yield None
        return
    state: dict[str, Any] = {"bar": None, "done": 0}

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].render_finish()
            state["bar"] = None

    def update(done: int, total: int) -> None:
        bar = state["bar"]
        if bar is None or bar.length != total or done < state["done"]:
            close()
            bar = state["bar"] = click.progressbar(length=total, label=label, file=None)
            bar.render_progress()
            state["done"] = 0
        bar.update(done - state["done"])
        state["done"] = done

    try:
        yield update
    finally:
        close()


# -- commands --------------------------------------------------------------------
@click.command("compact")
@archive_option(write=True)
@table_option
@before_option
@keep_option
@target_option
@yes_option
@dry_run_option
@wait_option
@grace_option
def compact_command(
    archive: str,
    tables: tuple[str, ...],
    before: str | None,
    keep: str | None,
    target_size: str | None,
    yes: bool,
    dry_run: bool,
    wait: float,
    grace: str | None,
) -> None:
    """Merge the small files of each closed hour into few big ones.

    Lossless by default, so it applies at once. With --keep latest it deletes
    rows: then it only shows the plan unless --yes. Safe while a camera records
    and others read; an interrupted run loses nothing and the next one finishes
    it. A second run does nothing.

    \b
    Example:
        archiver compact --archive data/archive
        archiver compact --archive data/archive --table tasks --keep latest --before 1d --yes
    """
    with progress_bar("Compacting") as progress:
        report = cleanup_call(
            maintenance.compact,
            archive,
            tables=tables or None,
            before=before,
            keep=cast(Keep, keep or "all"),  # click.Choice checked it
            target_file_bytes=target_size or maintenance.DEFAULT_TARGET_FILE_BYTES,
            dry_run=dry_run,
            allow_deletes=yes,
            lock_timeout=wait,
            progress=progress,
            grace=maintenance.DEFAULT_GRACE if grace is None else grace,
        )
    echo_compaction(report)
    echo_outcome(report.dry_run and _compaction_changes(report), dry_run=dry_run, yes=yes)


@click.command("expire")
@archive_option(write=True)
@older_option
@state_option
@table_option
@now_option
@yes_option
@dry_run_option
@wait_option
@grace_option
def expire_command(
    archive: str,
    older_than: str | None,
    states: tuple[str, ...],
    tables: tuple[str, ...],
    now: str | None,
    yes: bool,
    dry_run: bool,
    wait: float,
    grace: str | None,
) -> None:
    """Delete old hours and finished tasks; only shows the plan unless --yes.

    A task goes, with all its rows, when its last row is older than the
    retention of its state.

    \b
    Example:
        archiver expire --archive data/archive --older-than 30d
        archiver expire --archive data/archive --state SUCCESS=1d --state FAILURE=7d --yes
    """
    if older_than is None and not states:
        raise click.UsageError(
            "nothing to expire: give --older-than DURATION and/or --state STATE=DURATION"
        )
    with progress_bar("Expiring") as progress:
        report = cleanup_call(
            maintenance.expire,
            archive,
            older_than=older_than,
            per_state=states,
            tables=tables or None,
            now=now,
            dry_run=dry_run or not yes,
            lock_timeout=wait,
            progress=progress,
            grace=maintenance.DEFAULT_GRACE if grace is None else grace,
        )
    echo_expiry(report)
    echo_outcome(_expiry_changes(report), dry_run=dry_run, yes=yes)


@click.command("cleanup")
@archive_option(write=True)
@click.option(
    "--retention",
    "retention_file",
    metavar="FILE",
    help="Retention settings, JSON or TOML (options override them).",
)
@older_option
@state_option
@keep_option
@target_option
@table_option
@click.option("--no-compact", is_flag=True, help="Expire only.")
@now_option
@before_option
@yes_option
@dry_run_option
@wait_option
@grace_option
def cleanup_command(
    archive: str,
    retention_file: str | None,
    older_than: str | None,
    states: tuple[str, ...],
    keep: str | None,
    target_size: str | None,
    tables: tuple[str, ...],
    no_compact: bool,
    now: str | None,
    before: str | None,
    yes: bool,
    dry_run: bool,
    wait: float,
    grace: str | None,
) -> None:
    """Expire, then compact, as a retention file or the options say.

    If that deletes rows (an expiry, or --keep latest), nothing changes unless
    --yes: it only shows the plan. Otherwise (a lossless compaction) it applies
    at once. A retention file holds the same settings, e.g. in TOML:

    \b
        older_than = "30d"
        keep = "all"
        target_file_bytes = "128MiB"
        [per_state]
        SUCCESS = "1d"
        FAILURE = "7d"

    \b
    Example:
        archiver cleanup --archive data/archive --state SUCCESS=1d --dry-run
        archiver cleanup --archive data/archive --older-than 30d --state SUCCESS=1d --yes
    """
    with progress_bar("Cleaning up") as progress:
        report = cleanup_call(
            maintenance.cleanup,
            archive,
            retention_file,
            older_than=older_than,
            per_state=states,
            keep=cast(Keep | None, keep),  # click.Choice checked it
            target_file_bytes=target_size,
            tables=tables,
            compact=False if no_compact else None,
            now=now,
            before=before,
            dry_run=dry_run,
            allow_deletes=yes,
            lock_timeout=wait,
            progress=progress,
            grace=maintenance.DEFAULT_GRACE if grace is None else grace,
        )
    if report.expiry is not None:
        echo_expiry(report.expiry)
    if report.expiry is not None and report.compaction is not None:
        click.echo()
    if report.compaction is not None:
        echo_compaction(report.compaction)
    changes = _expiry_changes(report.expiry) or _compaction_changes(report.compaction)
    echo_outcome(report.dry_run and changes, dry_run=dry_run, yes=yes)


COMMANDS = [compact_command, expire_command, cleanup_command]
