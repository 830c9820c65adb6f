"""The ``archiver`` command line: a thin click layer over the library."""

from __future__ import annotations

import click

from .. import __version__
from .output import run_library_call  # noqa: F401  (re-exported for the command modules)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="archiver")
def cli() -> None:
    """Record snapshots of a Celery cluster into partitioned Parquet, and query them.

    \b
    Example:
        archiver record --replay data/celery-events-sample.jsonl --archive data/replayed
        archiver query tasks --archive data/replayed --latest --where state=FAILURE
        archiver report --archive data/replayed --output report.html
    """


def _register() -> None:
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        if module.name.startswith("cmd_"):
            mod = importlib.import_module(f"{__name__}.{module.name}")
            for command in getattr(mod, "COMMANDS", ()):
                cli.add_command(command)


_register()
