"""From a frozen state to Arrow record batches: the replaceable part of the Parquet camera.

A converter is any object with a ``schemas`` mapping (table name -> ``pa.Schema``,
each with a non-null ``captured_at`` timestamp column) and a method
``convert(state, *, captured_at, snapshot_id) -> dict[str, pa.RecordBatch]`` that
the camera calls while the state is frozen. :class:`CeleryConverter` handles
``archiver.State`` and Celery's own ``celery.events.state.State``.

Values come from events, so any of them can have the wrong type: a value that does
not fit its column is stored as null (strings: as ``str(value)``), never raised.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import chain, repeat
from operator import attrgetter
from typing import Any, Literal, Protocol

import numpy as np
import pyarrow as pa

from . import schema as S
from .changes import ChangeDetector, Mode, StateCounts, WorkerRow, current_tasks

RedactMode = Literal["null", "hash"]
#: Task columns that can be redacted. Celery copies argument values into
#: ``exception`` and ``traceback`` (an exception's message, a frame's locals), so
#: redacting ``args``/``kwargs`` alone does not hide them: see :func:`redaction_gaps`.
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
_STATE = attrgetter("state")
_TASK_VALUES = attrgetter(*_TASK_ATTRS)
# Beyond this many microseconds from the epoch, int64 overflows.
_MAX_MICROS = 9.2e18


class Converter(Protocol):
    """Turns a frozen state into one record batch per table."""

    schemas: dict[str, pa.Schema]

    def convert(
        self, state: Any, *, captured_at: float, snapshot_id: str
    ) -> dict[str, pa.RecordBatch]: ...


def _as_float(value: Any) -> float | None:
    """An int or float as a float; None for anything else (bools, strings, ints beyond float)."""
    kind = type(value)
    if kind is float:
        return float(value)
    if kind is int:
        try:
            return float(value)
        except OverflowError:
            return None
    return None


def _has_bool(values: Sequence[Any], numbers: np.ndarray) -> bool:
    """Whether ``values`` holds a bool (Arrow reads True as 1.0): looked for only near 0 and 1."""
    return bool(((numbers == 0.0) | (numbers == 1.0)).any()) and bool in set(map(type, values))


def epoch_to_timestamps(values: Sequence[Any]) -> pa.Array:
    """Float epoch seconds -> ``timestamp[us, UTC]``; anything else or out of range is null."""
    n = len(values)
    try:  # Arrow reads floats, ints and None natively: the common case
        floats = pa.array(values, type=pa.float64())
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        floats = None
    if floats is not None:
        if floats.null_count == n:
            return pa.nulls(n, S.TIMESTAMP)
        seconds = floats.to_numpy(zero_copy_only=False)  # nulls -> NaN
        if _has_bool(values, seconds):
            floats = None
    if floats is None:
        seconds = np.array([_as_float(v) for v in values], dtype="f8")  # None -> NaN
    with np.errstate(over="ignore", invalid="ignore"):  # overflow: inf, nulled below
        micros = seconds * 1e6
    np.round(micros, out=micros)
    ok = np.abs(micros) < _MAX_MICROS  # False for NaN (null), inf and overflow
    if ok.all():
        return pa.array(micros.astype("i8"), type=S.TIMESTAMP)
    return pa.array(np.where(ok, micros, 0.0).astype("i8"), type=S.TIMESTAMP, mask=~ok)


def _merged(convert: Any, columns: list[Sequence[Any]]) -> list[pa.Array]:
    """``convert`` applied to several equally long columns in one call (less overhead
    per call), then cut back into one array per column."""
    n = len(columns[0])
    whole = convert(list(chain.from_iterable(columns)))
    return [whole.slice(i * n, n) for i in range(len(columns))]


def constant_timestamps(seconds: float, n: int) -> pa.Array:
    """``n`` copies of one epoch time as ``timestamp[us, UTC]``."""
    return pa.repeat(pa.scalar(round(seconds * 1e6), type=S.TIMESTAMP), n)


def _strings(values: Sequence[Any]) -> pa.Array:
    try:
        return pa.array(values, type=pa.string())
    except (ValueError, TypeError):  # ArrowInvalid, ArrowTypeError, UnicodeEncodeError
        return pa.array([None if v is None else _text(v) for v in values], type=pa.string())


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    try:
        return str(value)
    except Exception:  # a broken __str__ must not stop the snapshot
        return f"<unprintable {type(value).__name__}>"


def _category(values: Sequence[Any]) -> pa.Array:
    try:
        return pa.array(values, type=S.CATEGORY)
    except (ValueError, TypeError):
        return _strings(values).dictionary_encode()


def _hostnames(workers: Sequence[Any]) -> list[Any]:
    """Each task's worker (an object, usually one of a few) as its hostname."""
    distinct = {id(w): w for w in workers}
    names = {key: _hostname(w) for key, w in distinct.items()}
    return list(map(names.__getitem__, map(id, workers)))


def _ints(values: Sequence[Any], type_: pa.DataType) -> pa.Array:
    """Python ints within the type's range; anything else (floats, bools, text) is null.

    Arrow is asked to infer the type first: given ``type=int32`` it would truncate 4.5 to 4.
    """
    try:
        array = pa.array(values)
        if pa.types.is_integer(array.type) or pa.types.is_null(array.type):
            return array.cast(type_)  # a safe cast: out of range raises
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
        pass
    info = np.iinfo(type_.to_pandas_dtype())
    lo, hi = int(info.min), int(info.max)
    return pa.array([v if type(v) is int and lo <= v <= hi else None for v in values], type_)


def _floats(values: Sequence[Any]) -> pa.Array:
    """Ints and floats (NaN and inf included) as float64; anything else is null."""
    try:
        array = pa.array(values, type=pa.float64())
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
        array = None
    if array is not None and not _has_bool(values, array.to_numpy(zero_copy_only=False)):
        return array
    return pa.array([_as_float(v) for v in values], pa.float64())


def _float_list(value: Any) -> list[float] | None:
    if not isinstance(value, (list, tuple)):
        return None
    try:
        floats: list[Any] = [None if type(x) is bool else float(x) for x in value]
    except (TypeError, ValueError, OverflowError):
        return None
    return None if None in floats else floats


def _alive(worker: Any, now: float) -> bool | None:
    """Whether ``worker`` is alive at ``now``; None when its heartbeat or freq is not a number.

    Celery's ``Worker.heartbeat_expires`` raises on such values (an int too big for a float).
    """
    beats = worker.heartbeats
    if not beats:
        return False
    try:
        return bool(now < worker.heartbeat_expires)
    except (OverflowError, TypeError, ValueError):
        last, freq = _as_float(beats[-1]), _as_float(getattr(worker, "freq", None))
        if last is None and type(beats[-1]) is int:  # beyond a float: +-inf
            return beats[-1] > 0
        if last is None or freq is None:
            return None
        return now < last + freq * 2
    except Exception:
        return None


def _redact(values: Sequence[Any], key: bytes | None) -> list[Any]:
    """Redacted ``values``: all null without a key, else keyed hashes (see redact_hash)."""
    if key is None:
        return [None] * len(values)
    keyed = hmac.new(key, digestmod=hashlib.sha256)
    out: list[Any] = []
    for v in values:
        if v is None:
            out.append(None)
        else:
            h = keyed.copy()
            h.update(_text(v).encode())
            out.append(h.hexdigest()[:32])
    return out


def redact_hash(value: Any, key: bytes | str) -> str:
    """The stored form of a redacted value with ``redact_mode="hash"``.

    HMAC-SHA256 of the value's text under ``key``, as 32 hex digits: equal values
    give equal hashes, and only whoever holds the key can hash a guess to match.
    """
    digest: str = _redact([value], _key(key))[0]
    return digest


def _key(key: bytes | str | None) -> bytes | None:
    """``key`` as bytes (a str is UTF-8 encoded); an empty key is a ValueError."""
    if key is None:
        return None
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, (bytes, bytearray)):
        raise ValueError(f"redact_key must be bytes or str, got {type(key).__name__}")
    if not key:
        raise ValueError("redact_key is empty: give a secret of at least one byte")
    return bytes(key)


def redaction_gaps(redact: Iterable[str]) -> tuple[str, ...]:
    """The columns that still show argument values although ``args``/``kwargs`` are redacted.

    Celery copies argument values into ``exception`` and ``traceback``; this
    returns those of them that ``redact`` leaves out (empty when nothing leaks).
    """
    redact = set(redact)
    if not redact & {"args", "kwargs"}:
        return ()
    return tuple(c for c in ("exception", "traceback") if c not in redact)


def _hostname(worker: Any) -> Any:
    return getattr(worker, "hostname", worker)


def _values(mapping: Any) -> list[Any]:
    """The values of a state's ``tasks``/``workers`` without touching LRU order or locks."""
    return list(getattr(mapping, "data", mapping).values())


#: Task rows staged as Python values before one record batch is built (see CeleryConverter).
STAGE_ROWS = 4096


class CeleryConverter:
    """Tasks, workers and one summary row per snapshot, from a Celery-style state.

    Args:
        mode: ``"changes"`` writes a task or worker only when it changed since the
            previous snapshot; ``"full"`` writes everything in the state each time.
        redact: task columns stored as null (or hashed) instead of their value, any
            of :data:`REDACTABLE`. Celery copies argument values into ``exception``
            and ``traceback``: redact those too to hide the arguments.
        redact_mode: ``"null"`` or ``"hash"`` (HMAC-SHA256 under ``redact_key``, 32 hex
            digits: equal values match, and only the key's holder can test a guess).
        redact_key: the secret key of the hash mode (bytes or str); required by it.
        stage_rows: task rows of small snapshots are kept as Python values and turned
            into one record batch once this many are staged, or when :meth:`drain`
            is called (the camera drains before every write). Building one batch per
            few thousand rows instead of one per snapshot saves Arrow's fixed cost
            per column. The default, 1, returns every snapshot's rows from
            :meth:`convert` at once; :class:`archiver.ParquetCamera` uses 4096.

    With ``archiver.State`` the changed tasks come from ``State.take_changes()``
    (cost proportional to the changes); with any other state (Celery's) they are
    found by comparing each task's fields with the previous snapshot.
    """

    schemas = {name: S.with_metadata(schema, name) for name, schema in S.SCHEMAS.items()}

    def __init__(
        self,
        *,
        mode: Mode = "changes",
        redact: Iterable[str] = (),
        redact_mode: RedactMode = "null",
        redact_key: bytes | str | None = None,
        stage_rows: int = 1,
    ) -> None:
        if stage_rows < 1:
            raise ValueError(f"stage_rows must be >= 1, got {stage_rows!r}")
        self.changes = ChangeDetector(mode)  # raises on a bad mode
        if redact_mode not in ("null", "hash"):
            raise ValueError(f"redact_mode must be 'null' or 'hash', got {redact_mode!r}")
        redact = tuple(dict.fromkeys(redact))
        unknown = sorted(set(redact) - set(REDACTABLE))
        if unknown:
            raise ValueError(
                f"cannot redact {', '.join(unknown)}: choose from {', '.join(REDACTABLE)}"
            )
        key = _key(redact_key)
        if redact_mode == "hash" and key is None:
            raise ValueError(
                "redact_mode 'hash' needs a secret key (redact_key): an unkeyed hash "
                "of a value can be recomputed by anyone"
            )
        if redact_mode == "null" and key is not None:
            raise ValueError("redact_key is only used with redact_mode 'hash'")
        self.mode: Mode = mode
        self.redact = redact
        self.redact_mode = redact_mode
        self._redact_key = key  # None in null mode; kept out of repr
        self.stage_rows = stage_rows
        self._stage: list[tuple[dict[str, Any], int, float, str]] = []
        self._staged = 0
        self._stage_lock = threading.Lock()
        #: Tasks per state, kept from the changes of a state that reports them.
        self.counts = StateCounts()
        self._empty = {
            name: pa.RecordBatch.from_pylist([], schema=schema)
            for name, schema in self.schemas.items()
        }
        self._snapshot_struct = pa.struct(list(self.schemas["snapshots"]))
        #: Values stored as null because they did not fit their column, by "table.column".
        self.values_nulled: Counter[str] = Counter()

    def __repr__(self) -> str:
        return (
            f"CeleryConverter(mode={self.mode!r}, redact={self.redact!r}, "
            f"redact_mode={self.redact_mode!r})"
        )

    # -- which rows, and tasks per state --------------------------------------
    def _worker_rows(self, state: Any, now: float, taken: list[Any]) -> list[WorkerRow]:
        """Every worker of the state with whether it is alive, and those removed from
        the state since the previous snapshot (e.g. offline), which get a last row."""
        workers = _values(state.workers)
        if taken:
            known = {w.hostname for w in workers}
            workers.extend(w for w in taken if w.hostname not in known)
        return [(worker, _alive(worker, now)) for worker in workers]

    def _state_counts(
        self, state: Any, taken: list[Any] | None, values: dict[str, Any]
    ) -> Counter[Any]:
        """Tasks per state, from what was already read for this snapshot when possible."""
        read = self.changes.states_read()
        if read is not None:  # every task's signature was read
            return read
        current = current_tasks(state)
        uuids, states = values.get("uuid", ()), values.get("state", ())
        if taken is None:  # full mode: every task was read
            return Counter(states[: len(current)])
        if self.mode == "changes":
            return self.counts.update(state, current, uuids, states)
        # full mode on a state that tracks changes: every task was read, in state order
        n = len(current)
        dropped = getattr(state, "changes_dropped", None)
        return self.counts.reset(uuids[:n], states[:n], dropped=dropped)

    # -- batches --------------------------------------------------------------
    def convert(
        self, state: Any, *, captured_at: float, snapshot_id: str
    ) -> dict[str, pa.RecordBatch]:
        """One batch per table for this snapshot; call while ``state`` is frozen.

        If building a batch fails, nothing is forgotten: the next snapshot writes
        the same changes again.
        """
        take = getattr(state, "take_changes", None)
        taken_tasks, taken_workers = take() if take is not None else (None, [])
        try:
            tasks = self.changes.tasks(state, taken_tasks)
            workers = self.changes.workers(self._worker_rows(state, captured_at, taken_workers))
            values = self._task_values(tasks)
            counts = self._state_counts(state, taken_tasks, values)
            batches = {
                "tasks": self._stage_tasks(values, len(tasks), captured_at, snapshot_id),
                "workers": self.worker_batch(workers, captured_at, snapshot_id),
                "snapshots": self.snapshot_batch(
                    state, captured_at, snapshot_id, tasks_written=len(tasks), counts=counts
                ),
            }
        except BaseException:
            self.counts.invalidate()
            restore = getattr(state, "restore_changes", None)
            if restore is not None and taken_tasks is not None:
                restore(taken_tasks, taken_workers)
            raise
        self.changes.commit()
        return batches

    def task_batch(self, tasks: list[Any], captured_at: float, snapshot_id: str) -> pa.RecordBatch:
        """One row per task."""
        values = self._task_values(tasks)
        return self._task_batch(values, [(len(tasks), captured_at, snapshot_id)])

    # -- staging --------------------------------------------------------------
    def _stage_tasks(
        self, values: dict[str, Any], n: int, captured_at: float, snapshot_id: str
    ) -> pa.RecordBatch:
        """Stage a small snapshot's task values; a batch of everything staged once enough are.

        A snapshot of more than ``stage_rows / 8`` rows is built at once (merging its
        Python values with the stage would cost more than it saves).
        """
        if n and n * 8 < self.stage_rows:
            with self._stage_lock:
                self._stage.append((values, n, captured_at, snapshot_id))
                self._staged += n
                if self._staged < self.stage_rows:
                    return self._empty["tasks"]
            return self._drain_tasks()
        batch = self._task_batch(values, [(n, captured_at, snapshot_id)])
        if not self._staged:
            return batch
        return pa.concat_batches([self._drain_tasks(), batch])

    def drain(self) -> dict[str, pa.RecordBatch]:
        """The rows staged by earlier :meth:`convert` calls, as record batches."""
        batch = self._drain_tasks()
        return {"tasks": batch} if batch.num_rows else {}

    @property
    def staged_rows(self) -> int:
        return self._staged

    def _drain_tasks(self) -> pa.RecordBatch:
        with self._stage_lock:
            stage, self._stage, self._staged = self._stage, [], 0
        if not stage:
            return self._empty["tasks"]
        if len(stage) == 1:
            values = stage[0][0]
        else:
            values = {
                name: list(chain.from_iterable(s[0][name] for s in stage)) for name in _TASK_ATTRS
            }
        try:
            return self._task_batch(values, [(n, at, sid) for _, n, at, sid in stage])
        except BaseException:  # keep the staged rows for the next try
            with self._stage_lock:
                self._stage[:0] = stage
                self._staged += sum(n for _, n, _, _ in stage)
            raise

    @staticmethod
    def _task_values(tasks: list[Any]) -> dict[str, Any]:
        """Column name -> the tasks' values (one pass over the task objects)."""
        if not tasks:
            return {}
        return dict(zip(_TASK_ATTRS, zip(*map(_TASK_VALUES, tasks))))

    def _task_batch(
        self, values: dict[str, Any], snapshots: list[tuple[int, float, str]]
    ) -> pa.RecordBatch:
        """A batch of task rows; ``snapshots`` gives (rows, captured_at, snapshot_id) in order."""
        schema = self.schemas["tasks"]
        n = sum(rows for rows, _, _ in snapshots)
        if not n:
            return self._empty["tasks"]
        values = dict(values)
        values["worker"] = _hostnames(values["worker"])
        for field in self.redact:
            values[field] = _redact(values[field], self._redact_key)
        if len(snapshots) == 1:
            _, captured_at, snapshot_id = snapshots[0]
            arrays: dict[str, pa.Array] = {
                "captured_at": constant_timestamps(captured_at, n),
                "snapshot_id": pa.repeat(pa.scalar(snapshot_id, pa.string()), n),
            }
        else:
            counts = [rows for rows, _, _ in snapshots]
            micros = np.repeat([round(at * 1e6) for _, at, _ in snapshots], counts)
            ids = chain.from_iterable(repeat(sid, rows) for rows, _, sid in snapshots)
            arrays = {
                "captured_at": pa.array(micros.astype("i8"), type=S.TIMESTAMP),
                "snapshot_id": pa.array(list(ids), pa.string()),
            }
        for field in S.TASK_CATEGORY_FIELDS:
            arrays[field] = _category(values[field])
        times = S.TASK_TIME_FIELDS
        arrays.update(zip(times, _merged(epoch_to_timestamps, [values[f] for f in times])))
        texts = ("uuid", *S.TASK_TEXT_FIELDS, "root_id", "parent_id")
        arrays.update(zip(texts, _merged(_strings, [values[f] for f in texts])))
        arrays["retries"] = _ints(values["retries"], pa.int32())
        arrays["runtime"] = _floats(values["runtime"])
        arrays["clock"] = _ints(values["clock"], pa.int64())
        self._count_nulled("tasks", values, arrays, (*times, "retries", "runtime", "clock"))
        return pa.RecordBatch.from_arrays([arrays[f.name] for f in schema], schema=schema)

    def _count_nulled(
        self, table: str, values: dict[str, Any], arrays: dict[str, pa.Array], columns: Any
    ) -> None:
        """Count the values stored as null because they did not fit their column."""
        for column in columns:
            nulled = arrays[column].null_count - values[column].count(None)
            if nulled > 0:
                self.values_nulled[f"{table}.{column}"] += nulled

    def worker_batch(
        self, workers: list[WorkerRow], captured_at: float, snapshot_id: str
    ) -> pa.RecordBatch:
        """One row per ``(worker, alive)``."""
        n = len(workers)
        if not n:
            return self._empty["workers"]
        objs = [w for w, _ in workers]

        def col(name: str) -> list[Any]:
            return [getattr(w, name, None) for w in objs]

        values = {name: col(name) for name in ("pid", "freq", "active", "processed", "loadavg")}
        values["last_heartbeat"] = [w.heartbeats[-1] if w.heartbeats else None for w in objs]
        values["alive"] = [alive for _, alive in workers]
        arrays = {
            "captured_at": constant_timestamps(captured_at, n),
            "snapshot_id": pa.array([snapshot_id] * n, pa.string()),
            "hostname": _category(col("hostname")),
            "alive": pa.array(values["alive"], pa.bool_()),
            "pid": _ints(values["pid"], pa.int64()),
            "freq": _floats(values["freq"]),
            "active": _ints(values["active"], pa.int64()),
            "processed": _ints(values["processed"], pa.int64()),
            "loadavg": pa.array(list(map(_float_list, values["loadavg"])), pa.list_(pa.float64())),
            "sw_ident": _category(col("sw_ident")),
            "sw_ver": _category(col("sw_ver")),
            "sw_sys": _category(col("sw_sys")),
            "last_heartbeat": epoch_to_timestamps(values["last_heartbeat"]),
        }
        self._count_nulled("workers", values, arrays, values)
        schema = self.schemas["workers"]
        return pa.RecordBatch.from_arrays([arrays[f.name] for f in schema], schema=schema)

    def snapshot_batch(
        self,
        state: Any,
        captured_at: float,
        snapshot_id: str,
        *,
        tasks_written: int,
        counts: Counter[Any] | None = None,
    ) -> pa.RecordBatch:
        """The snapshot's one summary row: counters, workers alive, tasks per state.

        ``counts`` (tasks per state) is computed from the state when not given.
        """
        tasks = current_tasks(state)
        workers = _values(state.workers)
        if counts is None:
            counts = Counter(map(_STATE, tasks.values()))
        known = {s: counts.get(s, 0) for s in S.TASK_STATES}
        other = sum(n for s, n in counts.items() if s not in known)
        alive = sum(1 for w in workers if w.heartbeats and _alive(w, captured_at))

        def number(value: Any) -> int | None:
            return value if type(value) is int else None

        row = {
            "captured_at": round(captured_at * 1e6),
            "snapshot_id": snapshot_id,
            "event_count": number(getattr(state, "event_count", None)),
            "task_count": number(getattr(state, "task_count", None)),
            "tasks_in_state": len(tasks),
            "worker_count": len(workers),
            "alive_workers": alive,
            "tasks_written": tasks_written,
            **{f"tasks_{s.lower()}": known[s] for s in S.TASK_STATES},
            "tasks_other": other,
        }
        # one struct conversion: a third of the cost of one array per column
        values = pa.array([row], type=self._snapshot_struct).flatten()
        return pa.RecordBatch.from_arrays(values, schema=self.schemas["snapshots"])
