"""Shared CLI helpers: the --archive option, error mapping, tables on the terminal."""

from __future__ import annotations

import shutil
import sys
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from ..errors import ArchiverError, DamagedArchiveWarning

T = TypeVar("T")

DEFAULT_ARCHIVE = "./data/archive"

archive_option = click.option(
    "--archive",
    default=DEFAULT_ARCHIVE,
    show_default=True,
    help="Archive path or URI (file://, s3://, gs://, memory://).",
)


def run_library_call(fun: Callable[..., T], *args: Any, **kwargs: Any) -> T:
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
                raise click.ClickException(str(exc)) from exc
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
