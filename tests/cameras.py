"""Cameras for `archiver record --camera module:Class` tests."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from typing import Any, ClassVar

from celery.events.snapshot import Polaroid as CeleryPolaroid

from archiver import Polaroid


class CountingCamera(Polaroid):
    """Remembers (event_count, tasks in state) at every shot, in the class (CLI tests)."""

    shots: ClassVar[list[tuple[int, int]]] = []

    def on_shutter(self, state: Any) -> None:
        type(self).shots.append((state.event_count, len(state.tasks)))


class NotACamera:
    """Not a Polaroid: `--camera tests.cameras:NotACamera` must be refused."""


class SqliteCamera(CeleryPolaroid):
    """A camera written for `celery events --camera`: Celery's Polaroid writing every shutter
    to SQLite (the file named by $ARCHIVER_TEST_SQLITE): tasks in tasks_by_time() order,
    workers, counters, and the type of state it was given."""

    def on_shutter(self, state: Any) -> None:
        with contextlib.closing(sqlite3.connect(os.environ[SQLITE_ENV])) as db, db:
            db.executescript(SQLITE_SCHEMA)
            shot = db.execute("SELECT COUNT(*) FROM shots").fetchone()[0] + 1
            kind = f"{type(state).__module__}.{type(state).__name__}"
            db.execute(
                "INSERT INTO shots VALUES (?, ?, ?, ?, ?)",
                (shot, state.event_count, state.task_count, len(state.tasks), kind),
            )
            db.executemany(
                "INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        shot,
                        rank,
                        uuid,
                        *(_plain(getattr(task, f, None)) for f in TASK_COLUMNS),
                        task.worker.hostname if task.worker is not None else None,
                    )
                    for rank, (uuid, task) in enumerate(state.tasks_by_time())
                ],
            )
            db.executemany(
                "INSERT INTO workers VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (shot, name, w.processed, w.active, w.pid, json.dumps(w.heartbeats))
                    for name, w in state.workers.items()
                ],
            )


class PlainCamera:
    """Not a Polaroid of either kind, but Celery's camera constructor and install/cancel."""

    shots: ClassVar[list[int]] = []

    def __init__(self, state, freq=1.0, maxrate=None, timer=None, app=None) -> None:
        self.state, self.freq, self.timer, self.maxrate = state, freq, timer, maxrate
        self._tref = None

    def install(self) -> None:
        self._tref = self.timer.call_repeatedly(self.freq, self.shoot)

    def shoot(self) -> None:
        self.state.freeze_while(lambda: type(self).shots.append(self.state.event_count))

    def cancel(self) -> None:
        if self._tref is not None:
            self.shoot()
            self._tref.cancel()


class NoCeleryArguments:
    """Has install() and cancel() but not Celery's camera constructor."""

    def __init__(self, state, archive) -> None: ...

    def install(self) -> None: ...

    def cancel(self) -> None: ...


SQLITE_ENV = "ARCHIVER_TEST_SQLITE"
TASK_COLUMNS = ("state", "name", "clock", "retries", "result", "exception", "timestamp")
SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS shots (shot, event_count, task_count, tasks, state_class);
CREATE TABLE IF NOT EXISTS tasks
    (shot, rank, uuid, state, name, clock, retries, result, exception, timestamp, worker);
CREATE TABLE IF NOT EXISTS workers (shot, hostname, processed, active, pid, heartbeats);
"""


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, (int, float, str)) else repr(value)
