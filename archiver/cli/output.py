"""Shared CLI helpers: the --archive option, error mapping, tables on the terminal."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

import click
from click.decorators import FC

from ..archive_path import check_archive_path
from ..errors import ArchiverError, DamagedArchiveWarning
from ..storage import redact_uri, resolve

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


def run_library_call(fun: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call into the library; a user mistake becomes a one-line ``Error:`` and exit code 1.

    A skipped damaged file or folder is shown as one ``Warning:`` line on stderr.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DamagedArchiveWarning)
        try:
            return fun(*args, **kwargs)
        except ArchiverError as exc:
            raise click.ClickException(redact_uri(str(exc))) from exc
        finally:
            seen: set[str] = set()
            for w in caught:
                text = str(w.message)
                if issubclass(w.category, DamagedArchiveWarning) and text not in seen:
                    seen.add(text)
                    click.echo(f"Warning: {text}", err=True)
                elif not issubclass(w.category, DamagedArchiveWarning):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table with aligned columns."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


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
