"""``archiver record`` and ``archiver tap``."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
from typing import Any

import click

from ..convert import REDACTABLE, redaction_gaps
from ..errors import ArchiverError
from ..maintenance import Retention
from ..pidfile import Pidfile
from ..record import Recorder, load_camera_class
from ..sources import BrokerUnavailable, LiveStats, celery_app, check_broker, consume_live
from ..storage import redact_uri
from ..timeparse import duration_or_none
from .output import archive_option, is_terminal

EX_UNAVAILABLE = 69
EX_IOERR = 74  # rows could not be written (sysexits.h)
#: Progress lines when stderr is not a terminal: logged at INFO whatever --loglevel says.
PROGRESS_LOG = logging.getLogger("archiver.progress")
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


def parse_duration(value: str | None) -> float | None:
    """Seconds from "55m", "2h", "90s", "1d12h" or a bare number of seconds."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        delta = duration_or_none(value)
        if delta is None:
            raise click.BadParameter(
                f"{value!r} is not a duration (use e.g. 90s, 55m, 2h, 1d)"
            ) from None
        seconds = delta.total_seconds()
    if not seconds > 0:
        raise click.BadParameter(f"{value!r} must be positive")
    return seconds


def lost_report(summary: Any) -> str:
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
        if self.shown:
            click.echo(err=True)


@contextlib.contextmanager
def logging_to(loglevel: str, logfile: str | None, *, progress: bool = True):
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
def stop_on_signals(stop: Any):
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
    type=float,
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
@click.option("-r", "--maxrate", default=None, help="Most snapshots allowed, e.g. 10/m.")
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
@click.option("--duration", metavar="TIME", help="Stop after this long, e.g. 55m.")
@click.option("--limit", type=click.IntRange(min=1), help="Stop after N events.")
@click.option(
    "--pidfile", type=click.Path(dir_okay=False), help="Refuse to start while another run holds it."
)
@click.option("-f", "--logfile", type=click.Path(dir_okay=False), help="Log to this file.")
@click.option("-l", "--loglevel", default="WARNING", show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def record(
    broker,
    app_name,
    replay,
    speed,
    archive,
    freq,
    maxrate,
    cleanup_freq,
    clear_after,
    camera_spec,
    mode,
    redact,
    redact_mode,
    redact_key_file,
    max_tasks,
    flush_interval,
    retention,
    duration,
    limit,
    pidfile,
    logfile,
    loglevel,
    quiet,
):
    """Record snapshots of a Celery cluster into the archive.

    Events come from a live broker (--broker or -A) or a JSON-lines file
    (--replay). SIGINT/SIGTERM take a final snapshot, flush and exit 0.

    \b
    Example:
        archiver record --replay data/celery-events-sample.jsonl --archive data/archive
        archiver record --broker redis://localhost:6379/0 --duration 55m --pidfile /run/archiver.pid
    """
    broker = broker_or_env(broker, app_name, replay)
    sources = [s for s in (broker or app_name, replay) if s]
    if len(sources) != 1:
        raise click.UsageError("give exactly one source: --broker URL, -A APP or --replay FILE")
    if redact_key_file and redact_mode != "hash":
        raise click.UsageError("--redact-key-file is only used with --redact-mode hash")
    redact_key = load_redact_key(redact_key_file) if redact_mode == "hash" else None
    warn_redaction_gaps(redact)
    with logging_to(loglevel, logfile, progress=not quiet):
        progress = Progress(enabled=not quiet, tty=is_terminal() and not logfile)
        try:
            camera_cls = load_camera_class(camera_spec) if camera_spec else None
            options = dict(
                freq=freq,
                maxrate=maxrate,
                cleanup_freq=cleanup_freq,
                clear_after=clear_after,
                max_tasks=max_tasks,
                duration=parse_duration(duration),
                limit=limit,
                progress=progress,
            )
            if camera_cls is not None:
                options["camera"] = camera_cls
            recorder = Recorder(
                archive,
                mode=mode,
                redact=redact,
                redact_mode=redact_mode,
                redact_key=redact_key,
                flush_interval=flush_interval,
                retention=Retention.from_file(retention) if retention else None,
                **options,
            )
            with contextlib.ExitStack() as stack:
                if pidfile:
                    stack.enter_context(Pidfile(pidfile))
                stack.enter_context(stop_on_signals(recorder.stop))
                if replay:
                    summary = recorder.replay_file(replay, speed=speed)
                else:
                    summary = recorder.live(celery_app(broker, app_name))
        except BrokerUnavailable as exc:
            progress.done()
            click.echo(f"Error: {exc}", err=True)
            sys.exit(EX_UNAVAILABLE)
        except (ArchiverError, ValueError) as exc:
            progress.done()
            raise click.ClickException(str(exc)) from exc
        progress.done()
        if recorder.lines.malformed:
            click.echo(click.style(recorder.lines.report(), fg="yellow"), err=True)
        click.echo(summary.line())
        logging.getLogger("archiver.record").info(summary.line())
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
@click.option("--duration", metavar="TIME", help="Stop after this long, e.g. 10m.")
@click.option("--limit", type=click.IntRange(min=1), help="Stop after N events.")
def tap(broker, app_name, out, duration, limit):
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
    seconds = parse_duration(duration)
    count = 0
    stopped = []
    started = time.monotonic()
    last_flush = started

    def should_stop() -> bool:
        return (
            bool(stopped)
            or (limit is not None and count >= limit)
            or (seconds is not None and time.monotonic() - started >= seconds)
        )

    with logging_to("WARNING", None, progress=False):
        try:
            app = celery_app(broker, app_name)
            check_broker(app)
        except BrokerUnavailable as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(EX_UNAVAILABLE)
        except ArchiverError as exc:
            raise click.ClickException(str(exc)) from exc
        try:
            stream = click.open_file(out, "w", encoding="utf-8", atomic=False, lazy=False)
        except OSError as exc:
            raise click.ClickException(f"cannot write {out}: {exc.strerror or exc}") from exc

        def handler(event: dict) -> None:
            nonlocal count
            if limit is not None and count >= limit:
                return
            stream.write(json.dumps(event, default=str, ensure_ascii=False) + "\n")
            count += 1

        def on_idle() -> None:  # so that `tail -f` sees events and a kill loses at most 1 s
            nonlocal last_flush
            now = time.monotonic()
            if now - last_flush >= 1.0:
                last_flush = now
                stream.flush()

        stats = LiveStats()
        with stop_on_signals(lambda: stopped.append(True)):
            try:
                consume_live(app, handler, should_stop=should_stop, on_idle=on_idle, stats=stats)
            finally:
                stream.flush()
                if out != "-":
                    stream.close()
        lost = f" (broker lost {stats.losses} times)" if stats.losses else ""
        if stats.bad_messages:
            lost += f" ({stats.bad_messages} undecodable messages skipped)"
        click.echo(f"Wrote {count:,} events to {out}{lost}.", err=True)


COMMANDS = [record, tap]
