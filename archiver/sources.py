"""Where events come from: JSON-lines files (replays) and a live Celery broker."""

from __future__ import annotations

import gzip
import io
import json
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from .errors import ArchiverError

logger = logging.getLogger(__name__)

CELERY_MISSING = "the live recorder needs Celery: pip install 'archiver[celery]'"


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


def open_events_file(path: str) -> IO[str]:
    """Open a JSON-lines file for reading: ``-`` is stdin, ``.gz`` is decompressed."""
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
    try:
        if path.endswith(".gz"):
            return gzip.open(path, "rt", encoding="utf-8", errors="replace")
        return open(path, encoding="utf-8", errors="replace")
    except FileNotFoundError as exc:
        raise ArchiverError(f"replay file not found: {path}") from exc
    except OSError as exc:
        raise ArchiverError(f"cannot read replay file {path}: {exc.strerror or exc}") from exc


def read_events(stream: IO[str], stats: LineStats) -> Iterator[dict[str, Any]]:
    """Yield one event dict per line; malformed lines are counted in ``stats`` and skipped."""
    try:
        for number, line in enumerate(stream, 1):
            stats.lines = number
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError as exc:
                stats.bad(number, f"not JSON ({exc.msg})")
                continue
            if not isinstance(event, dict):
                stats.bad(number, f"not an event object ({type(event).__name__})")
                continue
            stats.events += 1
            yield event
    except (OSError, EOFError) as exc:  # e.g. a truncated .gz file
        stats.bad(stats.lines + 1, f"unreadable: {exc}")


def celery_app(broker: str | None = None, app: str | None = None) -> Any:
    """A Celery app from ``--broker URL`` or ``-A module:app``."""
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
        if broker:
            obj.conf.broker_url = broker
        return obj
    result = Celery("archiver", broker=broker, set_as_current=False)
    result.conf.broker_connection_retry_on_startup = False
    return result


class BrokerUnavailable(ArchiverError):
    """The broker cannot be reached."""


def check_broker(app: Any, timeout: float = 5.0) -> None:
    """Raise BrokerUnavailable unless the broker answers."""
    conn = app.connection_for_read()
    try:
        conn.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:
        raise BrokerUnavailable(f"cannot connect to the broker at {conn.as_uri()}: {exc}") from exc
    finally:
        conn.release()


def consume_live(
    app: Any,
    handler: Callable[[dict[str, Any]], Any],
    *,
    should_stop: Callable[[], bool],
    on_idle: Callable[[], Any] = lambda: None,
    max_backoff: float = 30.0,
) -> None:
    """Receive events with Celery's own receiver until ``should_stop()``; reconnect on loss.

    Events the broker dropped while the connection was down are lost.
    """
    import time

    backoff = 1.0
    while not should_stop():
        conn = app.connection_for_read()
        try:
            receiver = app.events.Receiver(conn, handlers={"*": handler})

            def on_iteration(receiver: Any = receiver) -> None:
                on_idle()
                if should_stop():
                    receiver.should_stop = True

            receiver.on_iteration = on_iteration
            receiver.connect_max_retries = 1
            for _ in receiver.consume(limit=None, timeout=None, safety_interval=1.0, wakeup=True):
                backoff = 1.0
                if should_stop():
                    break
            return
        except Exception as exc:  # kombu raises many types for a lost broker
            if should_stop():
                return
            logger.error("Lost the broker (%s); reconnecting in %.0f s", exc, backoff)
            deadline = time.monotonic() + backoff
            while time.monotonic() < deadline and not should_stop():
                on_idle()
                time.sleep(0.2)
            backoff = min(backoff * 2, max_backoff)
        finally:
            try:
                conn.release()
            except Exception:  # noqa: S110  (the connection is already gone)
                pass
