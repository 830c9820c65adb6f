"""From a frozen state to Arrow record batches: the replaceable part of the Parquet camera.

A converter is any object with a ``schemas`` mapping (table name -> ``pa.Schema``,
each with a ``captured_at`` timestamp column) and a method
``convert(state, *, captured_at, snapshot_id) -> dict[str, pa.RecordBatch]`` that
the camera calls while the state is frozen. :class:`CeleryConverter` handles
``archiver.State`` and Celery's own ``celery.events.state.State``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from operator import attrgetter
from typing import Any, Literal, Protocol

import numpy as np
import pyarrow as pa

from . import schema as S

Mode = Literal["changes", "full"]
RedactMode = Literal["null", "hash"]
REDACTABLE = ("args", "kwargs", "result", "exception", "traceback")

_TASK_ATTRS = (
    "uuid",
    "name",
    "state",
    "worker",
    *S.TASK_TIME_FIELDS,
    *S.TASK_TEXT_FIELDS,
    "retries",
    "runtime",
    "exchange",
    "routing_key",
    "client",
    "root_id",
    "parent_id",
    "clock",
)
# What an event can change on a task: used to find changed tasks in a state
# that does not track changes itself (Celery's State).
_TASK_SIGNATURE = attrgetter(
    "state",
    "timestamp",
    "clock",
    *S.TASK_TIME_FIELDS[:-1],
    "name",
    "retries",
    "result",
    "exception",
    "args",
)


class Converter(Protocol):
    """Turns a frozen state into one record batch per table."""

    schemas: dict[str, pa.Schema]

    def convert(
        self, state: Any, *, captured_at: float, snapshot_id: str
    ) -> dict[str, pa.RecordBatch]: ...


def epoch_to_timestamps(values: Sequence[Any]) -> pa.Array:
    """Float epoch seconds (or None) -> ``timestamp[us, UTC]``."""
    arr = np.array([v if isinstance(v, (int, float)) else np.nan for v in values], dtype="f8")
    mask = np.isnan(arr)
    micros = np.where(mask, 0, np.round(arr * 1e6)).astype("i8")
    return pa.array(micros, type=S.TIMESTAMP, mask=mask)


def _strings(values: Sequence[Any]) -> pa.Array:
    try:
        return pa.array(values, type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def _category(values: Sequence[Any]) -> pa.Array:
    return _strings(values).dictionary_encode()


def _ints(values: Sequence[Any], type_: pa.DataType) -> pa.Array:
    try:
        return pa.array(values, type=type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([v if isinstance(v, int) else None for v in values], type=type_)


def _floats(values: Sequence[Any]) -> pa.Array:
    return pa.array([v if isinstance(v, (int, float)) else None for v in values], pa.float64())


def _redact(values: Sequence[Any], mode: RedactMode) -> list[Any]:
    if mode == "null":
        return [None] * len(values)
    return [
        None if v is None else hashlib.sha256(str(v).encode()).hexdigest()[:32] for v in values
    ]


def _hostname(worker: Any) -> Any:
    return getattr(worker, "hostname", worker)


class CeleryConverter:
    """Tasks, workers and one summary row per snapshot, from a Celery-style state.

    Args:
        mode: ``"changes"`` writes a task or worker only when it changed since the
            previous snapshot; ``"full"`` writes everything in the state each time.
        redact: task columns stored as null (or hashed) instead of their value.
        redact_mode: ``"null"`` or ``"hash"`` (a SHA-256 prefix, to join on equal values).
    """

    schemas = {name: S.with_metadata(schema, name) for name, schema in S.SCHEMAS.items()}

    def __init__(
        self,
        *,
        mode: Mode = "changes",
        redact: Iterable[str] = (),
        redact_mode: RedactMode = "null",
    ) -> None:
        if mode not in ("changes", "full"):
            raise ValueError(f"mode must be 'changes' or 'full', got {mode!r}")
        if redact_mode not in ("null", "hash"):
            raise ValueError(f"redact_mode must be 'null' or 'hash', got {redact_mode!r}")
        redact = tuple(redact)
        unknown = sorted(set(redact) - set(REDACTABLE))
        if unknown:
            raise ValueError(
                f"cannot redact {', '.join(unknown)}: choose from {', '.join(REDACTABLE)}"
            )
        self.mode = mode
        self.redact = redact
        self.redact_mode = redact_mode
        self._task_sigs: dict[str, tuple] = {}
        self._worker_sigs: dict[str, tuple] = {}

    # -- which rows -----------------------------------------------------------
    def _changed_tasks(self, state: Any) -> list[Any]:
        take = getattr(state, "take_changes", None)
        if self.mode == "changes" and take is not None:
            tasks, _ = take()
            return tasks
        tasks = list(getattr(state.tasks, "data", state.tasks).values())
        if self.mode == "full":
            return tasks
        previous, current = self._task_sigs, {}
        changed = []
        for task in tasks:
            sig = _TASK_SIGNATURE(task)
            current[task.uuid] = sig
            if previous.get(task.uuid) != sig:
                changed.append(task)
        self._task_sigs = current
        return changed

    def _changed_workers(self, state: Any, now: float) -> list[tuple[Any, bool]]:
        workers = list(getattr(state.workers, "data", state.workers).values())
        rows, current = [], {}
        for worker in workers:
            beats = worker.heartbeats
            alive = bool(beats) and now < worker.heartbeat_expires
            sig = (beats[-1] if beats else None, alive, worker.active, worker.processed, worker.pid)
            current[worker.hostname] = sig
            if self.mode == "full" or self._worker_sigs.get(worker.hostname) != sig:
                rows.append((worker, alive))
        self._worker_sigs = current
        return rows

    # -- batches --------------------------------------------------------------
    def convert(
        self, state: Any, *, captured_at: float, snapshot_id: str
    ) -> dict[str, pa.RecordBatch]:
        """One batch per table for this snapshot; call while ``state`` is frozen."""
        tasks = self._changed_tasks(state)
        try:
            workers = self._changed_workers(state, captured_at)
            return {
                "tasks": self.task_batch(tasks, captured_at, snapshot_id),
                "workers": self.worker_batch(workers, captured_at, snapshot_id),
                "snapshots": self.snapshot_batch(
                    state, captured_at, snapshot_id, tasks_written=len(tasks)
                ),
            }
        except BaseException:
            restore = getattr(state, "restore_changes", None)
            if restore is not None and self.mode == "changes":
                restore(tasks, [])
            raise

    def task_batch(self, tasks: list[Any], captured_at: float, snapshot_id: str) -> pa.RecordBatch:
        n = len(tasks)
        if n:
            columns = list(zip(*map(attrgetter(*_TASK_ATTRS), tasks)))
        else:
            columns = [() for _ in _TASK_ATTRS]
        values = dict(zip(_TASK_ATTRS, columns))
        values["worker"] = [_hostname(w) for w in values["worker"]]
        for field in self.redact:
            values[field] = _redact(values[field], self.redact_mode)
        arrays: dict[str, pa.Array] = {
            "captured_at": epoch_to_timestamps([captured_at] * n),
            "snapshot_id": pa.array([snapshot_id] * n, pa.string()),
            "uuid": _strings(values["uuid"]),
        }
        for field in S.TASK_CATEGORY_FIELDS:
            arrays[field] = _category(values[field])
        for field in S.TASK_TIME_FIELDS:
            arrays[field] = epoch_to_timestamps(values[field])
        for field in (*S.TASK_TEXT_FIELDS, "root_id", "parent_id"):
            arrays[field] = _strings(values[field])
        arrays["retries"] = _ints(values["retries"], pa.int32())
        arrays["runtime"] = _floats(values["runtime"])
        arrays["clock"] = _ints(values["clock"], pa.int64())
        schema = self.schemas["tasks"]
        return pa.RecordBatch.from_arrays([arrays[f.name] for f in schema], schema=schema)

    def worker_batch(
        self, workers: list[tuple[Any, bool]], captured_at: float, snapshot_id: str
    ) -> pa.RecordBatch:
        n = len(workers)
        objs = [w for w, _ in workers]

        def col(name: str) -> list[Any]:
            return [getattr(w, name, None) for w in objs]

        loadavg = [
            [float(x) for x in v] if isinstance(v, (list, tuple)) else None for v in col("loadavg")
        ]
        arrays = {
            "captured_at": epoch_to_timestamps([captured_at] * n),
            "snapshot_id": pa.array([snapshot_id] * n, pa.string()),
            "hostname": _category(col("hostname")),
            "alive": pa.array([alive for _, alive in workers], pa.bool_()),
            "pid": _ints(col("pid"), pa.int64()),
            "freq": _floats(col("freq")),
            "active": _ints(col("active"), pa.int64()),
            "processed": _ints(col("processed"), pa.int64()),
            "loadavg": pa.array(loadavg, pa.list_(pa.float64())),
            "sw_ident": _category(col("sw_ident")),
            "sw_ver": _category(col("sw_ver")),
            "sw_sys": _category(col("sw_sys")),
            "last_heartbeat": epoch_to_timestamps([w.heartbeats[-1] if w.heartbeats else None for w in objs]),
        }
        schema = self.schemas["workers"]
        return pa.RecordBatch.from_arrays([arrays[f.name] for f in schema], schema=schema)

    def snapshot_batch(
        self, state: Any, captured_at: float, snapshot_id: str, *, tasks_written: int
    ) -> pa.RecordBatch:
        tasks = getattr(state.tasks, "data", state.tasks)
        workers = list(getattr(state.workers, "data", state.workers).values())
        counts = Counter(t.state for t in list(tasks.values()))
        known = {s: counts.pop(s, 0) for s in S.TASK_STATES}
        alive = sum(1 for w in workers if w.heartbeats and captured_at < w.heartbeat_expires)
        row = {
            "captured_at": epoch_to_timestamps([captured_at]),
            "snapshot_id": pa.array([snapshot_id]),
            "event_count": pa.array([int(getattr(state, "event_count", 0))], pa.int64()),
            "task_count": pa.array([int(getattr(state, "task_count", 0))], pa.int64()),
            "tasks_in_state": pa.array([len(tasks)], pa.int64()),
            "worker_count": pa.array([len(workers)], pa.int64()),
            "alive_workers": pa.array([alive], pa.int64()),
            "tasks_written": pa.array([tasks_written], pa.int64()),
            **{f"tasks_{s.lower()}": pa.array([known[s]], pa.int64()) for s in S.TASK_STATES},
            "tasks_other": pa.array([sum(counts.values())], pa.int64()),
        }
        schema = self.schemas["snapshots"]
        return pa.RecordBatch.from_arrays([row[f.name] for f in schema], schema=schema)
