"""Where events come from: JSON-lines files (replays) and a live Celery broker."""

from __future__ import annotations

import contextlib
import gzip
import json
import json.scanner
import logging
import os
import select
import stat
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from .errors import ArchiverError, missing_extra
from .state import describe_event

logger = logging.getLogger(__name__)

CELERY_MISSING = missing_extra("the live recorder's Celery", "celery", "celery redis")
GZIP_MAGIC = b"\x1f\x8b"
_SCAN = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # (typeshed)
#: While draining a pipe after a stop, read at most this much more.
MAX_DRAIN_BYTES = 64 << 20


@dataclass
class LineStats:
    """What a replay file held."""

    lines: int = 0
    events: int = 0
    malformed: int = 0
    malformed_lines: list[int] = field(default_factory=list)

    MAX_REPORTED = 5

    def bad(self, number: int, why: str) -> None:
        self.malformed += 1
        if len(self.malformed_lines) < self.MAX_REPORTED:
            self.malformed_lines.append(number)
            logger.warning("Skipping malformed line %d: %s", number, why)

    def report(self) -> str:
        """``"3 malformed lines skipped (lines 2, 7, 9)"``, or ``""`` when there were none."""
        if not self.malformed:
            return ""
        numbers = ", ".join(map(str, self.malformed_lines))
        more = ", ..." if self.malformed > len(self.malformed_lines) else ""
        noun = "line" if self.malformed == 1 else "lines"
        return f"Skipped {self.malformed} malformed {noun} (line {numbers}{more})"


def open_events_file(path: str) -> IO[bytes] | gzip.GzipFile:
    """Open a JSON-lines file as bytes: ``-`` is stdin; gzip is detected and decompressed."""
    if path == "-":
        return sys.stdin.buffer
    try:
        f = open(path, "rb")  # noqa: SIM115  (returned to the caller, who closes it)
    except FileNotFoundError as exc:
        raise ArchiverError(f"replay file not found: {path}") from exc
    except IsADirectoryError as exc:
        raise ArchiverError(f"replay file {path} is a directory") from exc
    except OSError as exc:
        raise ArchiverError(f"cannot read replay file {path}: {exc.strerror or exc}") from exc
    try:
        magic = f.peek(2)[:2] if hasattr(f, "peek") else b""
    except OSError:
        magic = b""
    if magic == GZIP_MAGIC:
        f.close()
        return gzip.open(path, "rb")
    return f


def _pollable_fd(stream: Any) -> int | None:
    """The file descriptor of a pipe, terminal or socket (reads that can block), else None."""
    if isinstance(stream, gzip.GzipFile):
        return None
    try:
        fd: int = stream.fileno()
        mode = os.fstat(fd).st_mode
    except (AttributeError, OSError, ValueError):
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return fd


def is_pipe(stream: Any) -> bool:
    """Whether ``stream`` is a pipe, terminal or socket (read with polling by read_events)."""
    return _pollable_fd(stream) is not None


def _poll_lines(
    fd: int, should_stop: Callable[[], bool], *, interval: float = 0.25, chunk: int = 1 << 16
) -> Iterator[bytes]:
    """Lines read from a pipe without ever blocking for more than ``interval`` seconds.

    Once ``should_stop()`` turns true, what is already in the pipe is still read (the
    events sent before the stop), then the iteration ends; an incomplete last line
    is dropped.
    """
    pending = b""
    draining = False
    drained = 0
    while True:
        if not draining and should_stop():
            draining = True
        try:
            ready, _, _ = select.select([fd], [], [], 0 if draining else interval)
        except (OSError, ValueError):
            break
        if not ready:
            if draining:
                if pending:
                    logger.debug("Dropped an incomplete last line of %d bytes", len(pending))
                return
            continue
        try:
            data = os.read(fd, chunk)
        except BlockingIOError:
            continue
        except OSError as exc:
            logger.error("Error reading the events stream: %s", exc)
            break
        if not data:  # end of file
            break
        if draining:
            drained += len(data)
        lines = (pending + data).split(b"\n") if pending else data.split(b"\n")
        pending = lines.pop()
        yield from lines
        if drained > MAX_DRAIN_BYTES:
            logger.warning("Stopped draining the events stream after %d bytes", drained)
            return
    if pending:
        yield pending


#: What :func:`_parse_stripped` returns for a line skipped (blank, or counted as bad).
_SKIPPED = object()


def _parse_stripped(text: str, number: int, stats: LineStats) -> object:
    """The JSON value of line ``number`` once stripped of spaces and a BOM (the scanner
    of the hot path takes neither); :data:`_SKIPPED` if blank or not JSON (counted)."""
    text = text.strip().lstrip("\ufeff")
    if not text:
        return _SKIPPED
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        stats.bad(number, _not_json(exc))
        return _SKIPPED


def _not_json(exc: ValueError | RecursionError) -> str:
    """Why a line is not JSON, for the malformed lines' report."""
    if isinstance(exc, RecursionError):
        return "not JSON (nested too deeply)"
    return f"not JSON ({getattr(exc, 'msg', exc)})"


def read_events(
    stream: IO[bytes] | IO[str] | Iterable[bytes | str],
    stats: LineStats,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one event dict per line; malformed lines are counted in ``stats`` and skipped.

    With ``should_stop``, a pipe or terminal (stdin) is read without blocking for
    long, so a stop is seen even while no line arrives; what was already sent is
    read before the iteration ends. Regular files are simply read line by line.
    """
    fd = _pollable_fd(stream) if should_stop is not None else None
    lines: Iterable[bytes | str] = (
        _poll_lines(fd, should_stop) if fd is not None and should_stop is not None else stream
    )
    scan = _SCAN
    number = stats.lines
    events = 0
    try:
        for number, line in enumerate(lines, stats.lines + 1):
            if isinstance(line, bytes):
                try:
                    text = line.decode()
                except UnicodeDecodeError:  # keep the event, with U+FFFD for the bad bytes
                    text = line.decode("utf-8", "replace")
            else:
                text = line
            try:
                # json's own C scanner, without json.loads' Python layers (the hot path)
                event, end = scan(text, 0)
                if end != len(text) and not text[end:].isspace():
                    raise json.JSONDecodeError("Extra data", text, end)
            except StopIteration:  # blank line, leading space or BOM, or not JSON at all
                event = _parse_stripped(text, number, stats)
                if event is _SKIPPED:
                    continue
            except (ValueError, RecursionError) as exc:
                stats.bad(number, _not_json(exc))
                continue
            if type(event) is not dict:
                stats.bad(number, f"not an event object ({type(event).__name__})")
                continue
            events += 1
            yield event
    except (OSError, EOFError, gzip.BadGzipFile) as exc:  # e.g. a truncated .gz file
        stats.bad(number + 1, f"unreadable: {exc}")
    finally:
        stats.lines = number
        stats.events += events


def celery_app(broker: str | None = None, app: str | None = None) -> Any:
    """A Celery app from a broker URL or an app named "module:app"."""
    try:
        from celery import Celery
        from celery.utils.imports import symbol_by_name
    except ImportError as exc:
        raise ArchiverError(CELERY_MISSING) from exc
    if app:
        try:
            obj = symbol_by_name(app if ":" in app or "." in app else f"{app}:app")
        except (ImportError, AttributeError, ValueError) as exc:
            raise ArchiverError(f"cannot import Celery app {app!r}: {exc}") from exc
        if not hasattr(obj, "connection_for_read"):
            raise ArchiverError(f"{app!r} is not a Celery app")
        if broker:
            obj.conf.broker_url = obj.conf.broker_read_url = broker
        return obj
    result = Celery("archiver", broker=broker, set_as_current=False)
    result.conf.broker_connection_retry_on_startup = False
    if broker:  # Celery's broker_url prefers $CELERY_BROKER_URL; a given --broker wins here
        result.conf.broker_read_url = broker
    return result


class BrokerUnavailable(ArchiverError):
    """The broker cannot be reached."""


def check_broker(app: Any, timeout: float = 5.0) -> None:
    """Raise BrokerUnavailable unless the broker answers (within about ``timeout`` s)."""
    conn = app.connection_for_read()
    try:
        conn.ensure_connection(max_retries=1, interval_start=1, timeout=timeout)
    except Exception as exc:
        raise BrokerUnavailable(f"cannot connect to the broker at {conn.as_uri()}: {exc}") from exc
    finally:
        conn.release()


#: The largest clock value a message may set the receiver's Lamport clock to (int64).
MAX_CLOCK = 2**63 - 1


@dataclass
class LiveStats:
    """What happened to the broker connection during a live run.

    ``bad_messages`` counts events skipped on the same connection because they could
    not be decoded (not JSON, not an event object, no ``type``, a ``timestamp`` or
    ``utcoffset`` Celery cannot localize), by kind in ``bad_kinds``.
    """

    connects: int = 0
    losses: int = 0
    seconds_lost: float = 0.0
    bad_messages: int = 0
    bad_kinds: Counter[str] = field(default_factory=Counter)

    def bad(self, kind: str, event: Any = None) -> None:
        """Count one skipped message; the first of each kind is logged by its identifying keys."""
        self.bad_messages += 1
        self.bad_kinds[kind] += 1
        if self.bad_kinds[kind] == 1:  # never the body: it may hold redacted values
            logger.warning("Skipping a bad event message (%s): %s", kind, describe_event(event))


def _guard_receiver(receiver: Any, stats: LiveStats) -> None:
    """Make a Celery EventReceiver skip (and count) bad messages instead of raising.

    Celery's ``_receive`` raises out of ``consume()`` on the first event it cannot
    decode, which looks like a lost broker; here each event of a message is decoded
    on its own, and a message kombu cannot decode is counted and skipped too.
    """
    from_message, process = receiver.event_from_message, receiver.process
    adjust = receiver.adjust_clock

    def adjust_clock(other: Any) -> Any:  # a bogus clock must not poison later events'
        if type(other) is int and 0 <= other <= MAX_CLOCK:
            return adjust(other)
        return receiver.clock.value

    def receive(body: Any, message: Any) -> None:
        for event in body if isinstance(body, list) else (body,):
            if not isinstance(event, dict):
                stats.bad(f"not an event object ({type(event).__name__})")
                continue
            if type(event.get("type")) is not str:
                stats.bad("event without a string type", event)
                continue
            try:
                decoded = from_message(event)
            except Exception as exc:
                stats.bad(f"cannot localize the event ({type(exc).__name__})", event)
                continue
            process(*decoded)

    def on_decode_error(message: Any, exc: Exception) -> None:
        stats.bad(f"undecodable message ({type(exc).__name__})")

    def get_consumers(consumer: Any, channel: Any) -> list[Any]:
        return [
            consumer(
                queues=[receiver.queue],
                callbacks=[receive],
                no_ack=True,
                accept=receiver.accept,
                on_decode_error=on_decode_error,
            )
        ]

    receiver.adjust_clock = adjust_clock
    receiver._receive = receive
    receiver.get_consumers = get_consumers


class _LiveConnection:
    """The reconnection bookkeeping of :func:`consume_live`: backoff and time lost."""

    def __init__(self, stats: LiveStats, max_backoff: float) -> None:
        self.stats = stats
        self.max_backoff = max_backoff
        self.backoff = 1.0
        self.lost_at: float | None = None

    def connected(self, uri: str) -> None:
        """A connection is consuming: count it, and log a reconnection's time lost."""
        self.stats.connects += 1
        if self.lost_at is not None:
            down = time.monotonic() - self.lost_at
            self.stats.seconds_lost += down
            logger.warning("Reconnected to the broker at %s after %.1f s", uri, down)
            self.lost_at = None
        else:
            logger.info("Connected to the broker at %s", uri)
        self.backoff = 1.0

    def lost(self, exc: Exception) -> float:
        """The connection failed: log it and return the seconds to wait before retrying."""
        if self.lost_at is None:
            self.lost_at = time.monotonic()
            self.stats.losses += 1
            logger.error(
                "Lost the broker (%s: %s); keeping the state, reconnecting in %.0f s",
                type(exc).__name__,
                exc,
                self.backoff,
            )
        else:
            logger.warning("Broker still unreachable (%s); retrying in %.0f s", exc, self.backoff)
        wait, self.backoff = self.backoff, min(self.backoff * 2, self.max_backoff)
        return wait

    def ended(self) -> None:
        """The run ends: count the time lost by a connection never restored."""
        if self.lost_at is not None:
            self.stats.seconds_lost += time.monotonic() - self.lost_at


def _live_receiver(
    app: Any,
    conn: Any,
    handler: Callable[[dict[str, Any]], Any],
    *,
    should_stop: Callable[[], bool],
    on_idle: Callable[[], Any],
    connection: _LiveConnection,
) -> Any:
    """Celery's event receiver on ``conn``, guarded against bad messages, that calls
    ``on_idle`` and checks ``should_stop`` between messages (at least once a second)."""
    receiver = app.events.Receiver(conn, handlers={"*": handler})
    _guard_receiver(receiver, connection.stats)
    uri = conn.as_uri()
    ready = receiver.on_consume_ready

    def on_iteration() -> None:
        on_idle()
        if should_stop():
            receiver.should_stop = True

    def on_consume_ready(*args: Any, **kw: Any) -> Any:
        connection.connected(uri)
        return ready(*args, **kw)

    receiver.on_iteration = on_iteration
    receiver.on_consume_ready = on_consume_ready
    receiver.connect_max_retries = 1
    return receiver


def _wait(
    seconds: float,
    should_stop: Callable[[], bool],
    on_idle: Callable[[], Any],
    sleep: Callable[[float], Any],
) -> None:
    """Wait ``seconds`` before a reconnection, calling ``on_idle`` and seeing a stop."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not should_stop():
        on_idle()
        sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def consume_live(
    app: Any,
    handler: Callable[[dict[str, Any]], Any],
    *,
    should_stop: Callable[[], bool],
    on_idle: Callable[[], Any] = lambda: None,
    max_backoff: float = 30.0,
    stats: LiveStats | None = None,
    sleep: Callable[[float], Any] = time.sleep,
) -> LiveStats:
    """Receive events with Celery's own receiver until ``should_stop()``; reconnect on loss.

    A message that cannot be decoded is counted in ``stats.bad_messages`` and skipped
    on the same connection; only an error of the connection itself reconnects.

    ``should_stop`` is checked at least once a second. A lost connection is logged
    and retried with exponential backoff (1 s doubling up to ``max_backoff``); the
    caller's state is untouched meanwhile. Events the broker dropped while the
    connection was down (Redis pub/sub and auto-deleted AMQP queues keep nothing)
    are lost.
    """
    stats = stats if stats is not None else LiveStats()
    connection = _LiveConnection(stats, max_backoff)
    while not should_stop():
        conn = app.connection_for_read()
        try:
            receiver = _live_receiver(
                app,
                conn,
                handler,
                should_stop=should_stop,
                on_idle=on_idle,
                connection=connection,
            )
            for _ in receiver.consume(limit=None, timeout=None, safety_interval=1.0, wakeup=True):
                if should_stop():
                    break
            return stats
        except Exception as exc:  # kombu raises many types for a lost broker
            if should_stop():
                return stats
            _wait(connection.lost(exc), should_stop, on_idle, sleep)
        finally:
            with contextlib.suppress(Exception):  # the connection may already be gone
                conn.release()
    connection.ended()
    return stats
