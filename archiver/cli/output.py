"""Shared CLI helpers: the --archive option, error mapping, tables on the terminal."""

from __future__ import annotations

import logging
import shutil
import sys
import time
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click
from click.decorators import FC

from ..archive_path import check_archive_path
from ..errors import ArchiverError, DamagedArchiveWarning
from ..storage import redact_uri, resolve
from ..timeparse import parse_duration

if TYPE_CHECKING:
    from ..record import Recorder

T = TypeVar("T")
P = ParamSpec("P")

DEFAULT_ARCHIVE = "./data/archive"
#: The environment variable every command's ``--archive`` defaults to.
ARCHIVE_ENV = "ARCHIVER_ARCHIVE"


def archive_option(*, write: bool = False, must_exist: bool = True) -> Callable[[FC], FC]:
    """``--archive`` (default ``$ARCHIVER_ARCHIVE``, else ./data/archive), checked before any work.

    A path that is not an archive (a file, a table, an archive's parent, another
    folder), a missing one when ``must_exist``, or with ``write`` a place that cannot
    be written is one ``Error:`` line and exit code 1.
    """

    def check(ctx: click.Context, param: click.Parameter, value: str) -> str:
        if ctx.resilient_parsing:
            return value
        run_library_call(
            lambda: check_archive_path(resolve(value), write=write, must_exist=must_exist)
        )
        return value

    return click.option(
        "--archive",
        envvar=ARCHIVE_ENV,
        show_envvar=True,
        default=DEFAULT_ARCHIVE,
        show_default=True,
        metavar="PATH|URI",
        callback=check,
        help="Archive path or URI (file://, s3://, gs://, memory://).",
    )


Callback = Callable[[click.Context, click.Parameter, str | None], str | None]


def checked_by(parse: Callable[[str, str], object]) -> Callback:
    """A click callback that checks an option's value while parsing with the library's
    own parser, ``parse(value, flag)``: a bad value is a usage error, exit code 2."""

    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is not None:
            try:
                parse(value, param.opts[0] if param.opts else "a value")
            except (ArchiverError, ValueError) as exc:
                raise click.BadParameter(str(exc)) from None
        return value

    return check


#: Duration options (``--duration``, ``--older-than``): the one rule of
#: :func:`archiver.timeparse.parse_duration` (a bare number has no unit and is refused).
checked_duration = checked_by(lambda value, flag: parse_duration(value, what=flag))


def run_library_call(fun: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call into the library; a user mistake becomes a one-line ``Error:`` and exit code 1.

    A skipped damaged file or folder is shown as one ``Warning:`` line on stderr.
    """
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DamagedArchiveWarning)
            try:
                return fun(*args, **kwargs)
            except ArchiverError as exc:
                raise click.ClickException(redact_uri(str(exc))) from exc
    finally:  # outside the block: warnings passed on are not recorded again (no endless loop)
        seen: set[str] = set()
        for w in caught:
            text = str(w.message)
            if issubclass(w.category, DamagedArchiveWarning) and text not in seen:
                seen.add(text)
                click.echo(f"Warning: {text}", err=True)
            elif not issubclass(w.category, DamagedArchiveWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


#: Space between the columns of a table.
GAP = 2
#: No column of a table is narrowed below this to fit the terminal.
MIN_COLUMN = 6


def escape(text: str) -> str:
    """``text`` with control and other non-printing characters escaped (``\\n``, ``\\x1b``).

    Task arguments and tracebacks come from the cluster: raw, an escape sequence could
    rewrite the terminal, a newline would break the table.
    """
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def _char_width(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def display_width(text: str) -> int:
    """Terminal columns taken by ``text``: 2 for wide (CJK) characters, 0 for combining marks.

    From :mod:`unicodedata` (the standard library) rather than the ``wcwidth`` package,
    which is not a dependency; emoji sequences joined by ZWJ are not handled.
    """
    if text.isascii():
        return len(text)
    return sum(_char_width(ch) for ch in text)


def clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` terminal columns, ending with an ellipsis when cut."""
    if display_width(text) <= width:
        return text
    out, used = [], 0
    for ch in text:
        w = _char_width(ch)
        if used + w > width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


def pad(text: str, width: int) -> str:
    """``text`` followed by spaces up to ``width`` terminal columns."""
    return text + " " * (width - display_width(text))


def fit_widths(widths: Sequence[int], total: int | None) -> list[int]:
    """Column widths narrowed (the widest first, not below MIN_COLUMN) to fit ``total``."""
    fitted = list(widths)
    if not total or not fitted:
        return fitted
    room = total - GAP * (len(fitted) - 1)
    while sum(fitted) > room:
        i = max(range(len(fitted)), key=fitted.__getitem__)
        floor = min(MIN_COLUMN, widths[i])
        if fitted[i] <= floor:
            break  # as narrow as it gets: the line runs over
        excess = sum(fitted) - room
        second = max((w for j, w in enumerate(fitted) if j != i), default=floor)
        fitted[i] -= max(1, min(excess, fitted[i] - max(second, floor)))
    return fitted


def table_lines(
    headers: Sequence[str], rows: Sequence[Sequence[str]], widths: Sequence[int]
) -> list[str]:
    """Header, rule and rows of a table with these column widths (cells clipped, escaped)."""
    lines = [
        "  ".join(pad(clip(escape(c), w), w) for c, w in zip(row, widths)).rstrip()
        for row in [list(headers), *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def natural_widths(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[int]:
    """The widest escaped cell (or header) of each column."""
    return [
        max(display_width(escape(row[i])) for row in [list(headers), *rows])
        for i in range(len(headers))
    ]


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], *, width: int | None = None
) -> str:
    """A plain text table with aligned columns, narrowed to ``width`` columns if given."""
    cells = [["" if v is None else str(v) for v in r] for r in rows]
    heads = [str(h) for h in headers]
    widths = fit_widths(natural_widths(heads, cells), width)
    return "\n".join(table_lines(heads, cells, widths))


def terminal_width() -> int | None:
    """The terminal's width (``$COLUMNS`` first), or None when stdout is not a terminal."""
    columns = shutil.get_terminal_size(fallback=(0, 0)).columns
    return columns or None


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    click.echo(format_table(headers, rows))


def human_bytes(n: float) -> str:
    """``512 B``, ``1.2 MiB``: binary units up to TiB, one decimal above bytes."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def is_terminal(stream: Any = None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


#: Progress lines when stderr is not a terminal: logged at INFO whatever --loglevel says.
PROGRESS_LOG = logging.getLogger("archiver.progress")


class Progress:
    """Live one-line status on a terminal, else one log line per minute."""

    def __init__(self, enabled: bool, tty: bool) -> None:
        self.enabled, self.tty = enabled, tty
        self.interval = 0.5 if tty else 60.0
        self.last = time.monotonic()
        self.last_events = 0
        self.shown = False

    def __call__(self, recorder: Recorder) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < self.interval:
            return
        rate = (recorder.events - self.last_events) / (now - self.last)
        self.last, self.last_events = now, recorder.events
        s = recorder.summary()
        text = (
            f"{rate:,.0f} events/s  events {s.events:,}  tasks {s.tasks:,}  "
            f"snapshots {s.snapshots:,}  rows {s.rows:,}  files {s.files:,}"
        )
        if self.tty:
            click.echo("\r" + click.style(text, fg="cyan") + "\x1b[K", nl=False, err=True)
            self.shown = True
        else:
            PROGRESS_LOG.info(text)

    def done(self) -> None:
        """End the status line, if one was shown."""
        if self.shown:
            click.echo(err=True)
