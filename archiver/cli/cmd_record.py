"""``archiver record`` and ``archiver tap``."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import click

from ..changes import Mode
from ..convert import REDACTABLE, RedactMode, redaction_gaps
from ..errors import ArchiverError
from ..pidfile import Pidfile
from ..ratelimit import parse_rate
from ..record import RecordSummary, record_events, tap_events
from ..sources import BrokerUnavailable
from ..storage import redact_uri
from ..timeparse import parse_duration as duration_of
from .output import (
    PROGRESS_LOG,
    Progress,
    archive_option,
    checked_by,
    checked_duration,
    is_terminal,
)

EX_UNAVAILABLE = 69
EX_IOERR = 74  # rows could not be written (sysexits.h)
#: Environment variable holding the key of ``--redact-mode hash`` (if no --redact-key-file).
REDACT_KEY_ENV = "ARCHIVER_REDACT_KEY"
MAX_KEY_BYTES = 4096
#: The broker when no source is given, as in Celery.
BROKER_ENV = "CELERY_BROKER_URL"


def broker_or_env(broker: str | None, app_name: str | None, replay: str | None) -> str | None:
    """``--broker``, else ``$CELERY_BROKER_URL`` when neither -A nor --replay is given."""
    if broker or app_name or replay:
        return broker
    return os.environ.get(BROKER_ENV) or None


def load_redact_key(path: str | None) -> bytes:
    """The hash-mode key: the file's bytes (less a final newline), else $ARCHIVER_REDACT_KEY."""
    if path is None:
        key = os.environ.get(REDACT_KEY_ENV)
        if key is None:
            raise click.ClickException(
                f"--redact-mode hash needs a secret key: give --redact-key-file PATH "
                f"or set {REDACT_KEY_ENV}"
            )
        if not key:
            raise click.ClickException(f"{REDACT_KEY_ENV} is empty: give a secret key")
        return key.encode()
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise click.ClickException(
            f"cannot read --redact-key-file {path}: {exc.strerror or exc}"
        ) from None
    if len(data) > MAX_KEY_BYTES:
        raise click.ClickException(
            f"--redact-key-file {path} is longer than {MAX_KEY_BYTES} bytes: is it a key?"
        )
    data = data.removesuffix(b"\n").removesuffix(b"\r")
    if not data:
        raise click.ClickException(f"--redact-key-file {path} is empty: put a secret key in it")
    return data


def warn_redaction_gaps(redact: str) -> None:
    """Warn when args/kwargs are redacted but not exception/traceback, where Celery copies them."""
    columns = [c.strip() for c in redact.split(",") if c.strip()]
    gaps = redaction_gaps(columns)
    if gaps and set(columns) <= set(REDACTABLE):
        click.echo(
            click.style(
                f"Warning: argument values are still stored in {' and '.join(gaps)} "
                f"(Celery copies them there): add {','.join(gaps)} to --redact to hide them",
                fg="yellow",
            ),
            err=True,
        )


#: Library parameters by the option that sets them, for the library's messages.
FLAGS = {
    "limit": "--limit",
    "duration": "--duration",
    "speed": "--speed",
    "max_tasks": "--max-tasks",
}


checked_rate = checked_by(lambda value, _flag: parse_rate(value))


def flag_wording(message: str) -> str:
    """A library message about a parameter ("speed must be >= 0") as about its option."""
    name, sep, rest = message.partition(" ")
    return f"{FLAGS[name]}{sep}{rest}" if name in FLAGS else message


def lost_report(summary: RecordSummary) -> str:
    """One line on what may be missing from the archive after a run."""
    parts = []
    rows = summary.rows_unwritten + summary.rows_dropped
    if rows:
        archive, error = summary.archive, summary.last_error
        parts.append(redact_uri(f"{rows:,} rows could not be written to {archive}: {error}"))
    if summary.event_errors:
        parts.append(f"{summary.event_errors:,} events failed in the state (see the log)")
    if summary.snapshot_errors:
        parts.append(f"{summary.snapshot_errors:,} snapshots failed (see the log)")
    nulled = sum(summary.values_nulled.values())
    if nulled:
        parts.append(f"{nulled:,} values did not fit their column (stored as null)")
    if summary.changes_dropped:
        parts.append(f"{summary.changes_dropped:,} task changes were dropped")
    return "; ".join(parts)


@contextlib.contextmanager
def logging_to(
    loglevel: str, logfile: str | None, *, progress: bool = True
) -> Iterator[logging.Handler]:
    """Log to stderr or ``logfile`` while the command runs; undone afterwards.

    Progress lines (when stderr is not a terminal) are let through whatever the level.
    """
    level = getattr(logging, loglevel.upper(), None)
    if not isinstance(level, int):
        raise click.BadParameter(f"unknown log level {loglevel!r}", param_hint="--loglevel")
    try:
        handler = logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot open {logfile}: {exc.strerror or exc}", param_hint="--logfile"
        ) from None
    handler.setFormatter(logging.Formatter("[%(asctime)s: %(levelname)s/%(name)s] %(message)s"))
    root = logging.getLogger()
    saved = root.level, PROGRESS_LOG.level
    root.addHandler(handler)
    root.setLevel(level)
    PROGRESS_LOG.setLevel(logging.INFO if progress else logging.WARNING)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        PROGRESS_LOG.setLevel(saved[1])
        handler.close()


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], object]) -> Iterator[None]:
    """SIGINT and SIGTERM call ``stop()`` (finish cleanly); a second one exits at once."""
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        log = logging.getLogger("archiver.record")
        if received:
            log.error("Received %s again: exiting without the final flush", name)
            raise SystemExit(128 + signum)
        received.append(signum)
        log.warning("Received %s: taking a final snapshot and flushing", name)
        stop()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


#: What a live run that received nothing says: Celery workers send no events by default.
NO_EVENTS_NOTE = (
    "Note: no events arrived: are the workers sending events? "
    "Start them with -E, or run: celery -A proj control enable_events"
)


@click.command()
@click.option(
    "-b",
    "--broker",
    metavar="URL",
    help=f"Live Celery broker (redis://, amqp://); default ${BROKER_ENV} if no other source.",
)
@click.option(
    "-A",
    "--app",
    "app_name",
    metavar="MODULE:APP",
    help="Take broker and settings from this Celery app.",
)
@click.option("--replay", metavar="FILE", help="JSON-lines events file ('-' for stdin, .gz ok).")
@click.option(
    "--speed",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Replay speed: 0 = as fast as possible, 1 = real time.",
)
@archive_option(write=True, must_exist=False)
@click.option(
    "-F",
    "--frequency",
    "--freq",
    "freq",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Seconds between snapshots (as `celery events -F`).",
)
@click.option(
    "-r",
    "--maxrate",
    default=None,
    callback=checked_rate,
    help="Most snapshots allowed, e.g. 10/m.",
)
@click.option(
    "--cleanup-freq",
    type=float,
    default=3600.0,
    show_default=True,
    help="Seconds between cleanups.",
)
@click.option("--clear-after", is_flag=True, help="Clear the state after every snapshot.")
@click.option(
    "-c",
    "--camera",
    "camera_spec",
    metavar="MODULE:CLASS",
    help="Camera to use instead: an archiver or Celery Polaroid (as `celery events --camera`).",
)
@click.option(
    "--mode",
    type=click.Choice(["changes", "full"]),
    default="changes",
    show_default=True,
    help="Write changed tasks only, or every task each snapshot.",
)
@click.option(
    "--redact",
    default="",
    metavar="COLS",
    help="Task columns not stored as they are, from args,kwargs,result,exception,traceback. "
    "Celery copies argument values into exception and traceback: redact them too.",
)
@click.option(
    "--redact-mode",
    type=click.Choice(["null", "hash"]),
    default="null",
    show_default=True,
    help="Store redacted values as null, or as a keyed hash (HMAC-SHA256) to match equal values.",
)
@click.option(
    "--redact-key-file",
    type=click.Path(dir_okay=False),
    metavar="PATH",
    help=f"Secret key of --redact-mode hash (default: ${REDACT_KEY_ENV}).",
)
@click.option(
    "--max-tasks",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Tasks kept in memory.",
)
@click.option(
    "--flush-interval",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds before buffered rows are written.",
)
@click.option(
    "--retention",
    metavar="FILE",
    help="Retention file (JSON or TOML): compact and expire every --cleanup-freq seconds.",
)
@click.option(
    "--duration", metavar="TIME", callback=checked_duration, help="Stop after this long, e.g. 55m."
)
@click.option("--limit", type=click.IntRange(min=1), help="Stop after N events.")
@click.option(
    "--pidfile", type=click.Path(dir_okay=False), help="Refuse to start while another run holds it."
)
@click.option("-f", "--logfile", type=click.Path(dir_okay=False), help="Log to this file.")
@click.option("-l", "--loglevel", default="WARNING", show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def record(
    broker: str | None,
    app_name: str | None,
    replay: str | None,
    speed: float,
    archive: str,
    freq: float,
    maxrate: str | None,
    cleanup_freq: float,
    clear_after: bool,
    camera_spec: str | None,
    mode: Mode,
    redact: str,
    redact_mode: RedactMode,
    redact_key_file: str | None,
    max_tasks: int,
    flush_interval: float,
    retention: str | None,
    duration: str | None,
    limit: int | None,
    pidfile: str | None,
    logfile: str | None,
    loglevel: str,
    quiet: bool,
) -> None:
    """Record snapshots of a Celery cluster into the archive.

    Events come from a live broker (--broker or -A) or a JSON-lines file
    (--replay). SIGINT/SIGTERM take a final snapshot, flush and exit 0.

    \b
    Example:
        archiver record --replay data/celery-events-sample.jsonl --archive data/replayed
        archiver record --broker redis://localhost:6379/0 --archive data/archive --duration 55m
    """
    broker = broker_or_env(broker, app_name, replay)
    sources = [s for s in (broker or app_name, replay) if s]
    if len(sources) != 1:
        raise click.UsageError("give exactly one source: --broker URL, -A APP or --replay FILE")
    if redact_key_file and redact_mode != "hash":
        raise click.UsageError("--redact-key-file is only used with --redact-mode hash")
    redact_key = load_redact_key(redact_key_file) if redact_mode == "hash" else None
    warn_redaction_gaps(redact)
    seconds = None if duration is None else duration_of(duration).total_seconds()
    with logging_to(loglevel, logfile, progress=not quiet):
        progress = Progress(enabled=not quiet, tty=is_terminal() and not logfile)
        stop = threading.Event()
        try:
            with contextlib.ExitStack() as stack:
                if pidfile:
                    stack.enter_context(Pidfile(pidfile))
                stack.enter_context(stop_on_signals(stop.set))
                summary = record_events(
                    archive,
                    replay=replay,
                    speed=speed,
                    broker=broker,
                    app=app_name,
                    camera=camera_spec,
                    freq=freq,
                    maxrate=maxrate,
                    cleanup_freq=cleanup_freq,
                    clear_after=clear_after,
                    mode=mode,
                    redact=redact,
                    redact_mode=redact_mode,
                    redact_key=redact_key,
                    max_tasks=max_tasks,
                    flush_interval=flush_interval,
                    retention=retention,
                    duration=seconds,
                    limit=limit,
                    progress=progress,
                    stop=stop,
                )
        except BrokerUnavailable as exc:
            progress.done()
            click.echo(f"Error: {exc}", err=True)
            sys.exit(EX_UNAVAILABLE)
        except (ArchiverError, ValueError) as exc:
            progress.done()
            raise click.ClickException(flag_wording(str(exc))) from exc
        progress.done()
        if summary.malformed_report:
            click.echo(click.style(summary.malformed_report, fg="yellow"), err=True)
        click.echo(summary.line())
        logging.getLogger("archiver.record").info(summary.line())
        if not replay and summary.events == 0:
            click.echo(NO_EVENTS_NOTE, err=True)
        if summary.lost:  # invalid input (malformed, rejected, undecodable) is not lost
            click.echo(f"Error: {lost_report(summary)}", err=True)
            sys.exit(EX_IOERR)


@click.command()
@click.option("-b", "--broker", metavar="URL", help=f"Live Celery broker (default ${BROKER_ENV}).")
@click.option(
    "-A", "--app", "app_name", metavar="MODULE:APP", help="Celery app to take the broker from."
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="JSON-lines file to write ('-' = stdout).",
)
@click.option(
    "--duration", metavar="TIME", callback=checked_duration, help="Stop after this long, e.g. 10m."
)
@click.option("--limit", type=click.IntRange(min=1), help="Stop after N events.")
def tap(
    broker: str | None, app_name: str | None, out: str, duration: str | None, limit: int | None
) -> None:
    """Record the raw event stream to a JSON-lines file (for replays and bug reports).

    The file replays with `archiver record --replay FILE`. SIGINT/SIGTERM stop
    it cleanly; a lost broker is retried with backoff.

    \b
    Example:
        archiver tap --broker redis://localhost:6379/0 --out events.jsonl --duration 10m
    """
    broker = broker_or_env(broker, app_name, None)
    if not (broker or app_name):
        raise click.UsageError(f"give --broker URL or -A APP (or set {BROKER_ENV})")
    seconds = None if duration is None else duration_of(duration).total_seconds()
    stop = threading.Event()
    with logging_to("WARNING", None, progress=False), stop_on_signals(stop.set):
        try:
            summary = tap_events(
                out, broker=broker, app=app_name, duration=seconds, limit=limit, stop=stop
            )
        except BrokerUnavailable as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(EX_UNAVAILABLE)
        except ArchiverError as exc:
            raise click.ClickException(flag_wording(str(exc))) from exc
    lost = f" (broker lost {summary.broker_losses} times)" if summary.broker_losses else ""
    if summary.bad_messages:
        lost += f" ({summary.bad_messages} undecodable messages skipped)"
    click.echo(f"Wrote {summary.events:,} events to {out}{lost}.", err=True)


COMMANDS = [record, tap]
