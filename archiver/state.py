"""In-memory cluster state built from Celery event dicts.

Same semantics as ``celery.events.state.State`` (state precedence for events that
arrive out of order, the merge rule for a late ``task-received``, custom states,
heartbeats and ``alive``, LRU limits), without importing Celery. Two additions:

* Malformed events are counted in :attr:`State.rejected_events` and skipped: they
  never raise out of :meth:`State.event` and never change the state.
* The state remembers which tasks and workers changed since the last
  :meth:`State.take_changes`, so a camera can write only what changed. A changed
  task is held until it is taken, even if the LRU limit evicts it meanwhile. When
  ``max_tasks_in_memory`` changes are held, :attr:`State.on_changes_full` is called
  (after the event, outside the lock) so that a camera takes them at once.

``tasks_by_time()`` (and ``tasks_by_type()``, ``tasks_by_worker()``) follow Celery's
order: a bounded, sorted list of ``(clock, timestamp, origin, …)`` entries, one per
task event. ``State``, ``Task`` and ``Worker`` pickle and deepcopy.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import sys
import threading
import time
import weakref
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterator, Mapping
from operator import itemgetter
from typing import Any, TypeAlias, TypeVar, overload

logger = logging.getLogger(__name__)

_K = TypeVar("_K")
_V = TypeVar("_V")
_T = TypeVar("_T")

PENDING, RECEIVED, STARTED, SUCCESS = "PENDING", "RECEIVED", "STARTED", "SUCCESS"
FAILURE, REVOKED, REJECTED, RETRY = "FAILURE", "REVOKED", "REJECTED", "RETRY"
READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, REJECTED, RETRY})
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
#: Strongest first; ``None`` stands for every custom state.
PRECEDENCE = (SUCCESS, FAILURE, None, REVOKED, STARTED, RECEIVED, REJECTED, RETRY, PENDING)
_PRECEDENCE = {s: i for i, s in enumerate(PRECEDENCE)}
_CUSTOM_PRECEDENCE = _PRECEDENCE[None]

TASK_EVENT_TO_STATE = {
    "sent": PENDING,
    "received": RECEIVED,
    "started": STARTED,
    "failed": FAILURE,
    "retried": RETRY,
    "succeeded": SUCCESS,
    "revoked": REVOKED,
    "rejected": REJECTED,
}
HEARTBEAT_EXPIRE_WINDOW = 200
HEARTBEAT_DRIFT_MAX = 16

_NUMBER = frozenset({float, int})
_OPT_NUMBER = frozenset({float, int, type(None)})
_MISSING = object()
_INF = float("inf")


def _finite(x: float) -> bool:
    """Not NaN and not infinite (NaN is the only value unequal to itself)."""
    return x == x and -_INF < x < _INF


_OPT_INT = frozenset({int, type(None)})
_OPT_STR = frozenset({str, type(None)})
_HEARTBEAT = frozenset({float, int, bool})
# Event keys that would overwrite the object's own machinery if merged as attributes
# (an event field named ``event`` or ``info`` would shadow the method and make every
# later event for that task raise).
_TASK_RESERVED = frozenset(
    {"worker", "children", "cluster_state", "state"}
    | {"event", "info", "as_dict", "merge_rules", "_fields", "_info_fields"}
)
_WORKER_RESERVED = frozenset(
    {"event", "heartbeats", "alive", "id", "heartbeat_expires", "status_string", "hostname"}
    | {"update", "alive_at", "heartbeat_max", "expire_window", "_fields"}
    | {"__dict__", "__class__", "__weakref__"}
)


def precedence(state: str | None) -> int:
    """Index of ``state`` in :data:`PRECEDENCE` (lower is stronger)."""
    return _PRECEDENCE.get(state, _CUSTOM_PRECEDENCE)


def heartbeat_expires(timestamp: float, freq: float = 60, expire_window: float = 200) -> float:
    """When a worker that last beat at ``timestamp`` is considered gone.

    An int beyond a float's range (Celery raises) counts as +-inf.
    """
    try:
        return float(timestamp) + float(freq) * (expire_window / 1e2)
    except OverflowError:
        if type(timestamp) is int and abs(timestamp) > 1e308:
            return _INF if timestamp > 0 else -_INF
        return _INF if freq > 0 else -_INF


class LRU(OrderedDict[_K, _V]):
    """Bounded mapping with kombu's ``LRUCache`` semantics.

    ``m[key]`` moves the key to the end; inserting a new key when full evicts the
    oldest. ``m.data`` reads without reordering, as Celery's dispatcher does.
    """

    def __init__(self, limit: int | None = None) -> None:
        super().__init__()
        self.limit = limit

    @property
    def data(self) -> LRU[_K, _V]:
        return self

    def __getitem__(self, key: _K) -> _V:
        value = OrderedDict.__getitem__(self, key)
        self.move_to_end(key)
        return value

    def __setitem__(self, key: _K, value: _V) -> None:
        if self.limit and key not in self and len(self) >= self.limit:
            self.popitem(last=False)
        OrderedDict.__setitem__(self, key, value)

    def get(self, key: _K, default: Any = None) -> Any:
        return OrderedDict.get(self, key, default)

    @overload
    def peek(self, key: _K) -> _V | None: ...
    @overload
    def peek(self, key: _K, default: _V | _T) -> _V | _T: ...
    def peek(self, key: _K, default: object = None) -> object:
        """Read without reordering."""
        return OrderedDict.get(self, key, default)


class Worker:
    """A worker as seen through its events."""

    heartbeat_max = 4
    expire_window = HEARTBEAT_EXPIRE_WINDOW
    _fields = (
        "hostname",
        "pid",
        "freq",
        "heartbeats",
        "clock",
        "active",
        "processed",
        "loadavg",
        "sw_ident",
        "sw_ver",
        "sw_sys",
    )
    __slots__ = (*_fields, "__dict__", "__weakref__")

    def __init__(
        self,
        hostname: str | None = None,
        pid: int | None = None,
        freq: float = 60,
        heartbeats: list[float] | None = None,
        clock: int = 0,
        active: int | None = None,
        processed: int | None = None,
        loadavg: list[float] | None = None,
        sw_ident: str | None = None,
        sw_ver: str | None = None,
        sw_sys: str | None = None,
    ) -> None:
        self.hostname = hostname
        self.pid = pid
        self.freq = freq
        self.heartbeats = [] if heartbeats is None else heartbeats
        self.clock = clock or 0
        self.active = active
        self.processed = processed
        self.loadavg = loadavg
        self.sw_ident = sw_ident
        self.sw_ver = sw_ver
        self.sw_sys = sw_sys

    def event(
        self,
        type_: str | None,
        timestamp: float | None = None,
        local_received: float | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        """Apply a worker event (``type_`` is the subject: online, heartbeat, offline)."""
        if fields:
            setter = object.__setattr__
            for key, value in fields.items():
                if key not in _WORKER_RESERVED:
                    setter(self, key, value)
        heartbeats = self.heartbeats
        if type_ == "offline":
            heartbeats[:] = []
            return
        if not local_received or not timestamp:
            return
        drift = abs(int(local_received) - int(timestamp))
        if drift > HEARTBEAT_DRIFT_MAX:
            _warn_drift(self.hostname, drift)
        hearts = len(heartbeats)
        if hearts > self.heartbeat_max - 1:
            heartbeats.pop(0)
        if hearts and local_received > heartbeats[-1]:
            heartbeats.append(local_received)
        else:
            bisect.insort(heartbeats, local_received)

    def update(self, fields: Mapping[str, Any], **kwargs: Any) -> None:
        for key, value in dict(fields, **kwargs).items():
            setattr(self, key, value)

    def __reduce__(self) -> tuple[Callable[..., Worker], tuple[type, dict[str, Any]]]:
        """Pickle as ``(function, args)`` like Celery, keeping every field of every event."""
        fields = {k: getattr(self, k) for k in self._fields}
        fields.update(self.__dict__)
        return _depickle_worker, (type(self), fields)

    @property
    def heartbeat_expires(self) -> float:
        return heartbeat_expires(self.heartbeats[-1], self.freq, self.expire_window)

    @property
    def alive(self, nowfun: Callable[[], float] = time.time) -> bool:
        return bool(self.heartbeats and nowfun() < self.heartbeat_expires)

    def alive_at(self, now: float) -> bool:
        """Whether the worker counts as alive at epoch ``now``."""
        return bool(self.heartbeats and now < self.heartbeat_expires)

    @property
    def status_string(self) -> str:
        return "ONLINE" if self.alive else "OFFLINE"

    @property
    def id(self) -> str:
        return f"{self.hostname}.{self.pid}"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Worker):
            return self.hostname == other.hostname
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.hostname)

    def __repr__(self) -> str:
        return f"<Worker: {self.hostname} ({self.status_string} clock:{self.clock})"


def _depickle_worker(cls: type[Worker], fields: dict[str, Any]) -> Worker:
    worker = cls(**{k: fields[k] for k in cls._fields if k in fields})
    setter = object.__setattr__
    for key, value in fields.items():
        if key not in cls._fields:
            setter(worker, key, value)
    return worker


#: Entries per chunk of the task heap (a chunk is split beyond twice this).
HEAP_CHUNK = 512

_drift_warned: set[str | None] = set()


def _warn_drift(hostname: str | None, drift: int) -> None:
    if hostname not in _drift_warned and len(_drift_warned) < 1000:
        _drift_warned.add(hostname)
        logger.warning(
            "Substantial drift from %s may mean clocks are out of sync: drift is %s seconds.",
            hostname,
            drift if drift < 10**12 else "more than 10**12",
        )


class Task:
    """A task as seen through its events."""

    # Fields merged from events, whose values are not checked: any type (hence Any).
    name: Any = None
    received: Any = None
    sent: Any = None
    started: Any = None
    succeeded: Any = None
    failed: Any = None
    retried: Any = None
    revoked: Any = None
    rejected: Any = None
    args: Any = None
    kwargs: Any = None
    eta: Any = None
    expires: Any = None
    retries: Any = None
    result: Any = None
    exception: Any = None
    timestamp: Any = None
    runtime: Any = None
    traceback: Any = None
    exchange: Any = None
    routing_key: Any = None
    root_id: Any = None
    parent_id: Any = None
    client: Any = None
    worker: Worker | None = None
    state: str = PENDING
    clock: int = 0

    _fields = (
        "uuid",
        "name",
        "state",
        "received",
        "sent",
        "started",
        "rejected",
        "succeeded",
        "failed",
        "retried",
        "revoked",
        "args",
        "kwargs",
        "eta",
        "expires",
        "retries",
        "worker",
        "result",
        "exception",
        "timestamp",
        "runtime",
        "traceback",
        "exchange",
        "routing_key",
        "clock",
        "client",
        "root",
        "root_id",
        "parent",
        "parent_id",
        "children",
    )
    #: Fields kept from an event that arrives after a stronger state was seen.
    merge_rules = {
        RECEIVED: ("name", "args", "kwargs", "parent_id", "root_id", "retries", "eta", "expires"),
    }
    _info_fields = (
        "args",
        "kwargs",
        "retries",
        "result",
        "eta",
        "runtime",
        "expires",
        "exception",
        "exchange",
        "routing_key",
        "root_id",
        "parent_id",
    )
    #: The seq of the heap entry that created this task object (0: not from an event), so
    #: that entries of an evicted task of the same uuid are not taken for this one.
    __slots__ = ("__dict__", "__weakref__", "_heap_id")

    def __init__(
        self,
        uuid: str | None = None,
        cluster_state: State | None = None,
        children: Any = None,
        **kwargs: Any,
    ) -> None:
        self.uuid = uuid
        self._heap_id = 0
        self.cluster_state = cluster_state
        tasks = cluster_state.tasks if cluster_state is not None else None
        self.children: weakref.WeakSet[Task] = weakref.WeakSet(
            () if tasks is None else (t for i in children or () if (t := tasks.peek(i)) is not None)
        )
        if kwargs:
            self.__dict__.update(kwargs)

    def event(
        self,
        type_: str,
        timestamp: float | None = None,
        local_received: float | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        """Apply a task event (``type_`` is the subject: sent, received, ...)."""
        fields = fields or {}
        d = self.__dict__
        state = TASK_EVENT_TO_STATE.get(type_)
        if state is not None:
            d[type_] = timestamp
        else:
            state = type_.upper()
        current = d.get("state", PENDING)
        if (
            state != RETRY
            and current != RETRY
            and _PRECEDENCE.get(state, _CUSTOM_PRECEDENCE)
            > _PRECEDENCE.get(current, _CUSTOM_PRECEDENCE)
        ):  # happened before the current state: merge only what the rule keeps
            keep = self.merge_rules.get(state)
            if keep is not None:
                d.update((k, v) for k, v in fields.items() if k in keep)
            elif _TASK_RESERVED.isdisjoint(fields):
                d.update(fields)
            else:
                d.update((k, v) for k, v in fields.items() if k not in _TASK_RESERVED)
        else:
            if _TASK_RESERVED.isdisjoint(fields):
                d.update(fields)
            else:
                d.update((k, v) for k, v in fields.items() if k not in _TASK_RESERVED)
            d["state"] = state
            d["timestamp"] = timestamp

    def info(self, fields: Any = None, extra: Any = None) -> dict[str, Any]:
        """The non-None display fields."""
        keys = list(self._info_fields if fields is None else fields) + list(extra or ())
        return {k: v for k in keys if (v := getattr(self, k, None)) is not None}

    def as_dict(self) -> dict[str, Any]:
        """Every field in :attr:`_fields`, with children, root and parent as ids."""
        out = {k: getattr(self, k, None) for k in self._fields}
        out["children"] = [t.uuid for t in self.children]
        out["root"], out["parent"] = self.root_id, self.parent_id
        return out

    def __reduce__(self) -> tuple[Callable[..., Task], tuple[type, dict[str, Any]]]:
        """Pickle as ``(function, args)`` like Celery: every field, children as ids, no state."""
        fields = {k: v for k, v in self.__dict__.items() if k != "cluster_state"}
        fields["children"] = [t.uuid for t in self.children]
        fields["_heap_id"] = getattr(self, "_heap_id", 0)
        return _depickle_task, (type(self), fields)

    @property
    def id(self) -> str | None:
        return self.uuid

    @property
    def origin(self) -> str | None:
        return self.client if self.worker is None else self.worker.id

    @property
    def ready(self) -> bool:
        return self.state in READY_STATES

    @property
    def parent(self) -> Task | None:
        cluster = self.cluster_state
        if not self.parent_id or cluster is None:
            return None
        return cluster.tasks.peek(self.parent_id)

    @property
    def root(self) -> Task | None:
        cluster = self.cluster_state
        if not self.root_id or cluster is None:
            return None
        return cluster.tasks.peek(self.root_id)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Task):
            return self.uuid == other.uuid
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.uuid)

    def __repr__(self) -> str:
        return f"<Task: {self.name}({self.uuid}) {self.state} clock:{self.clock}>"


def _depickle_task(cls: type[Task], fields: dict[str, Any]) -> Task:
    fields = dict(fields)
    heap_id = fields.pop("_heap_id", 0)
    task = cls(**fields)
    task._heap_id = heap_id
    return task


class _EntryFields:
    __slots__ = ()
    clock = property(itemgetter(0))
    origin = property(itemgetter(1))
    seq = property(itemgetter(2))
    timestamp = property(itemgetter(3))
    uuid = property(itemgetter(4))
    task_id = property(itemgetter(5))


class HeapEntry(_EntryFields, tuple[Any, ...]):
    """``(clock, origin, seq, timestamp, uuid, task_id)``: one task event in the task heap.

    Stored as a plain tuple of numbers and strings: sorted in C, by clock, then origin,
    then arrival (``seq``), which is the order of Celery's heap (kombu's ``timetuple``)
    while every clock is set: it compares clocks, then origins, never timestamps, and
    keeps equal ones in arrival order. Such tuples are not tracked by the garbage
    collector (Celery's hold weak references, and are). ``task_id`` is the task object's
    ``_heap_id``. (This class only names the fields, for ``_taskheap``.)
    """

    __slots__ = ()


def _kombu_lt(self: tuple[Any, ...], other: tuple[Any, ...]) -> bool:
    """``self < other`` as kombu's ``timetuple`` compares (see :class:`KombuEntry`)."""
    a, b = self[0], other[0]
    if a and b:
        return bool(self[1] < other[1]) if a == b else bool(a < b)
    try:
        return bool(self[3] < other[3])
    except TypeError:  # a timestamp of an odd type (Celery's heap raises): as 0
        return _as_time(self[3]) < _as_time(other[3])


class KombuEntry(_EntryFields, tuple[Any, ...]):
    """A heap entry compared exactly as kombu's ``timetuple``, which orders by timestamp
    when either clock is 0: used once a task event with clock 0 reaches the heap."""

    __slots__ = ()

    # Comparisons are plain functions (one for both orders), so that a plain tuple on
    # the other side compares by the same rule.
    __lt__ = _kombu_lt

    def __gt__(self, other: tuple[Any, ...]) -> bool:
        return _kombu_lt(other, self)

    def __le__(self, other: tuple[Any, ...]) -> bool:
        return not _kombu_lt(other, self)

    def __ge__(self, other: tuple[Any, ...]) -> bool:
        return not _kombu_lt(self, other)


def _as_time(value: Any) -> float:
    """A heap entry's timestamp for comparing: numbers as they are, anything else as 0."""
    return value if type(value) in (int, float) else 0.0


class _Index(defaultdict[Any, "weakref.WeakSet[Task]"]):
    """name -> WeakSet of tasks; calling it yields ``(uuid, task)`` newest first."""

    def __init__(self, fun: Callable[..., Iterator[tuple[str, Task]]]) -> None:
        super().__init__(weakref.WeakSet)
        self.fun = fun

    def __call__(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, Task]]:
        return self.fun(*args, **kwargs)


class RejectedEvent(ValueError):
    """An event that cannot be applied (the message says why)."""


class State:
    """Records the cluster's state from Celery events. Thread-safe.

    Args:
        callback: called as ``callback(state, event)`` for every event with a type, before
            it is checked and applied, as Celery does (a rejected one is then counted).
        max_workers_in_memory: LRU bound on :attr:`workers`.
        max_tasks_in_memory: LRU bound on :attr:`tasks` (oldest inserted first out).
        on_node_join / on_node_leave: called with the Worker; with ``on_node_leave``
            set, offline workers are removed from :attr:`workers`.
    """

    # Celery's names for the classes a state creates (a subclass may swap them). Type
    # aliases rather than plain attributes, so that ``Worker``/``Task`` in this class's
    # annotations still name the classes.
    Worker: TypeAlias = Worker
    Task: TypeAlias = Task
    #: :attr:`_taskheap` holds at most ``max_tasks_in_memory * heap_multiplier`` entries.
    heap_multiplier = 4

    def __init__(
        self,
        callback: Callable[[State, dict[str, Any]], Any] | None = None,
        max_workers_in_memory: int = 5000,
        max_tasks_in_memory: int = 10000,
        on_node_join: Callable[[Worker], Any] | None = None,
        on_node_leave: Callable[[Worker], Any] | None = None,
    ) -> None:
        self.event_callback = callback
        self.max_workers_in_memory = max_workers_in_memory
        self.max_tasks_in_memory = max_tasks_in_memory
        self.workers: LRU[str, Worker] = LRU(max_workers_in_memory)
        self.tasks: LRU[str, Task] = LRU(max_tasks_in_memory)
        self.on_node_join = on_node_join
        self.on_node_leave = on_node_leave
        self.handlers: dict[str, Callable[[str, dict[str, Any]], Any]] = {}
        self.event_count = 0
        self.task_count = 0
        #: Tasks created from events since the start (never reset; an evicted task seen
        #: again counts again).
        self.tasks_created = 0
        self.rejected_events = 0
        self.rejected_by_kind: Counter[str] = Counter()
        self._seen_types: set[str] = set()
        self._tasks_to_resolve: LRU[str, weakref.WeakSet[Task]] = LRU(max_tasks_in_memory)
        self._changed_tasks: dict[str | None, Task] = {}
        self._changed_workers: dict[str | None, Worker] = {}
        #: Called with no argument, outside the lock, once ``max_tasks_in_memory`` changed
        #: tasks are held (evicted ones included): a camera takes a snapshot then, so
        #: that no change is dropped. Called again only after :meth:`take_changes`.
        self.on_changes_full: Callable[[], Any] | None = None
        self.changes_full_at = max_tasks_in_memory or math.inf
        self._changes_full = self._changes_signalled = False
        #: Changed tasks held for :meth:`take_changes` are capped (an evicted task is
        #: held only here), so a state nobody takes changes from stays bounded.
        self.max_changes_held = 4 * max_tasks_in_memory if max_tasks_in_memory else math.inf
        self.changes_dropped = 0
        self._mutex = threading.Lock()
        self.tasks_by_type = _Index(self._tasks_by_type)
        self.tasks_by_worker = _Index(self._tasks_by_worker)
        # The task heap, Celery's sorted list cut in chunks of at most 2 * HEAP_CHUNK entries
        # (so an insert moves a chunk, not the whole list); _heap_maxes[i] >= chunk i's last
        # entry and < every entry of chunk i + 1.
        self._heap_chunks: list[list[Any]] = []
        self._heap_maxes: list[Any] = []
        self._heap_len = 0
        self._heap_seq = 0
        self._heap_bound: int | None = None
        self._heap_kombu = False  # a clock-0 entry arrived: KombuEntry from then on

    # -- pickling ------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        """Everything but the lock; weak references as the tasks they point to."""
        d = self.__dict__.copy()
        del d["_mutex"]
        for index in ("tasks_by_type", "tasks_by_worker"):
            d[index] = {key: list(tasks) for key, tasks in d[index].items()}
        d["_children_of"] = {u: [c.uuid for c in t.children] for u, t in self._own_tasks()}
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        d = dict(d)
        children = d.pop("_children_of", {})
        by_type, by_worker = d.pop("tasks_by_type"), d.pop("tasks_by_worker")
        self.__dict__.update(d)
        self._mutex = threading.Lock()
        self.tasks_by_type = _Index(self._tasks_by_type)
        self.tasks_by_worker = _Index(self._tasks_by_worker)
        for index, saved in ((self.tasks_by_type, by_type), (self.tasks_by_worker, by_worker)):
            for key, tasks in saved.items():
                index[key].update(tasks)
        tasks = self.tasks
        for uuid, task in self._own_tasks():
            task.cluster_state = self
            ids = children.get(uuid)
            if ids:
                task.children.update(c for i in ids if (c := tasks.peek(i)) is not None)

    def _own_tasks(self) -> Iterator[tuple[str, Task]]:
        yield from self.tasks.items()
        yield from getattr(self, "_changed_tasks", {}).items()

    # -- locking -------------------------------------------------------------
    def freeze_while(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fun`` with event intake blocked; clear afterwards if ``clear_after``."""
        clear_after = kwargs.pop("clear_after", False)
        with self._mutex:
            try:
                return fun(*args, **kwargs)
            finally:
                if clear_after:
                    self._clear()

    def clear(self, ready: bool = True) -> None:
        """Drop workers and finished tasks (all tasks if ``ready`` is False); zero the counters."""
        with self._mutex:
            self._clear(ready)

    def _clear(self, ready: bool = True) -> None:
        self.workers.clear()
        self._clear_tasks(ready)
        self.event_count = 0
        self.task_count = 0

    def clear_tasks(self, ready: bool = True) -> None:
        with self._mutex:
            self._clear_tasks(ready)

    def _clear_tasks(self, ready: bool = True) -> None:
        keep = (
            [(u, t) for u, t in self.tasks.items() if t.state not in READY_STATES] if ready else []
        )
        self.tasks.clear()
        for uuid, task in keep:
            OrderedDict.__setitem__(self.tasks, uuid, task)
        self._heap_kombu = False  # as Celery: unfinished tasks reappear with their next event
        self._set_heap([])

    def take_changes(self) -> tuple[list[Task], list[Worker]]:
        """Return and forget the tasks and workers changed since the last call.

        Call it while the state is frozen (inside :meth:`freeze_while`).
        """
        tasks, workers = self._changed_tasks, self._changed_workers
        self._changed_tasks, self._changed_workers = {}, {}
        self._changes_signalled = False
        return list(tasks.values()), list(workers.values())

    def restore_changes(self, tasks: list[Task], workers: list[Worker]) -> None:
        """Put back changes taken by :meth:`take_changes` that could not be used."""
        for task in tasks:
            self._changed_tasks.setdefault(task.uuid, task)
        for worker in workers:
            self._changed_workers.setdefault(worker.hostname, worker)

    # -- events --------------------------------------------------------------
    def event(self, event: Any) -> Any:
        """Apply one event dict. Returns ``((obj, created), subject)`` or None.

        A malformed event is counted in :attr:`rejected_events`, logged once per
        kind, and leaves the state unchanged.
        """
        with self._mutex:
            result = self._event(event)
        if self._changes_full:
            self._signal_changes_full()
        return result

    def _signal_changes_full(self) -> None:
        self._changes_full = False
        listener = self.on_changes_full
        if listener is None:
            return
        try:
            listener()
        except Exception:  # the listener's failure must not stop event intake
            logger.exception("on_changes_full listener %r failed", listener)

    def _reject(self, kind: str, event: Any, *, callback: bool = False) -> None:
        self.rejected_events += 1
        if kind not in self.rejected_by_kind:
            logger.warning("Skipping malformed event (%s): %s", kind, describe_event(event))
        self.rejected_by_kind[kind] += 1
        if callback and self.event_callback:  # Celery calls it for every event with a type
            self.event_callback(self, event)

    def _event(self, event: Any) -> Any:
        try:
            type_ = event["type"]
        except (TypeError, KeyError, IndexError):
            kind = "event without a type" if isinstance(event, Mapping) else "event is not a dict"
            return self._reject(kind, event)
        if type(type_) is not str:
            return self._reject("event type is not a string", event)
        group, _, subject = type_.partition("-")
        if group == "task":
            problem = _task_problem(event, subject)
            if problem:
                return self._reject(problem, event, callback=True)
        elif group == "worker":
            problem = _worker_problem(event, subject)
            if problem:
                return self._reject(problem, event, callback=True)

        self.event_count += 1
        if self.event_callback:
            self.event_callback(self, event)
        handler = self.handlers.get(group)
        if handler is not None:
            return handler(subject, event), subject
        if group == "task":
            return self._task_event(event, subject), subject
        if group == "worker":
            return self._worker_event(event, subject), subject
        return None

    def _worker_event(self, event: dict[str, Any], subject: str) -> tuple[Worker, bool]:
        hostname = event["hostname"]
        workers = self.workers
        is_offline = subject == "offline"
        worker = workers.peek(hostname)
        created = False
        if worker is None:
            worker = self.Worker(hostname)
            if not is_offline:
                workers[hostname] = worker
                created = True
        worker.event(subject, event["timestamp"], event["local_received"], event)
        if self.on_node_join and (created or subject == "online"):
            self.on_node_join(worker)
        if self.on_node_leave and is_offline:
            self.on_node_leave(worker)
            workers.pop(hostname, None)
        self._changed_workers[hostname] = worker
        return worker, created

    def _task_event(self, event: dict[str, Any], subject: str) -> tuple[Task, bool]:
        uuid = event["uuid"]
        hostname = event["hostname"]
        timestamp = event["timestamp"]
        local_received = event["local_received"]
        tasks = self.tasks
        task = tasks.peek(uuid)
        created = task is None
        if task is None:
            task = tasks[uuid] = self.Task(uuid, cluster_state=self)
            task._heap_id = self._heap_seq + 1  # the seq of its first entry, just below
            self.tasks_created += 1
        if subject == "sent":
            task.client = origin = hostname
        else:
            workers = self.workers
            worker = workers.peek(hostname)
            if worker is None:
                worker = workers[hostname] = self.Worker(hostname)
            task.worker = worker
            if local_received:  # Celery passes these swapped: the heartbeat is the event time
                worker.event(None, local_received, timestamp)
            self._changed_workers[hostname] = worker
            origin = f"{worker.hostname}.{worker.pid}"  # worker.id, as Celery's heap has it
        # One string object per origin, not per heap entry: 40,000 entries stay compact.
        self._heap_push(event["clock"], timestamp, sys.intern(origin), task)
        if subject == "received":
            self.task_count += 1
        task.event(subject, timestamp, local_received, event)
        name = task.name
        if name is not None:
            self._seen_types.add(name)
            if created:
                self.tasks_by_type[name].add(task)
                self.tasks_by_worker[hostname].add(task)
        parent_id = task.parent_id
        if parent_id:
            parent = tasks.peek(parent_id)
            if parent is not None:
                tasks.move_to_end(parent_id)  # Celery's lookup refreshes the parent's position
                parent.children.add(task)
            else:
                pending = self._tasks_to_resolve.peek(parent_id)
                if pending is None:
                    pending = self._tasks_to_resolve[parent_id] = weakref.WeakSet()
                pending.add(task)
        children = self._tasks_to_resolve.pop(uuid, None)
        if children is not None:
            task.children.update(children)
        changed = self._changed_tasks
        if len(changed) >= self.changes_full_at and not self._changes_signalled:
            self._changes_signalled = self._changes_full = self.on_changes_full is not None
        if created and len(changed) >= self.max_changes_held:
            self._drop_oldest_changes(uuid)
        self._changed_tasks[uuid] = task
        return task, created

    def _drop_oldest_changes(self, uuid: str) -> None:
        changed = self._changed_tasks
        if uuid in changed:
            return
        # Drop an eighth at once: deleting a dict's first key one at a time is O(n) each.
        drop = max(1, len(changed) // 8)
        self._changed_tasks = dict(itertools.islice(changed.items(), drop, None))
        if not self.changes_dropped:
            logger.warning(
                "More than %s changed tasks waiting for take_changes(): dropping the oldest",
                self.max_changes_held,
            )
        self.changes_dropped += drop

    def _heap_push(self, clock: int, timestamp: float, origin: str, task: Task) -> None:
        """Add one event's entry to the task heap, dropping the smallest beyond the bound.

        A clock that is not an int (accepted, as Celery applies such an event before its
        heap raises on it) sorts as a missing one, so that entries always compare.
        """
        if type(clock) is not int:
            clock = 0
        chunks = self._heap_chunks
        bound = self._heap_bound
        if bound is None:  # fixed at the first task event, as Celery's dispatcher does
            bound = self._heap_bound = (self.max_tasks_in_memory or 0) * self.heap_multiplier
        if bound and self._heap_len >= bound:  # Celery's taskheap.pop(0)
            first = chunks[0]
            del first[0]
            if not first and len(chunks) > 1:
                del chunks[0], self._heap_maxes[0]
        else:
            self._heap_len += 1
        self._heap_seq = seq = self._heap_seq + 1
        if not clock or self._heap_kombu:
            return self._kombu_push(clock, timestamp, origin, seq, task)
        entry = (clock, origin, seq, timestamp, task.uuid, task._heap_id)
        maxes = self._heap_maxes
        if maxes and entry < maxes[-1]:
            i = bisect.bisect_right(maxes, entry)
            chunk = chunks[i]
            bisect.insort(chunk, entry)
            if len(chunk) > 2 * HEAP_CHUNK:
                chunks.insert(i + 1, chunk[HEAP_CHUNK:])
                del chunk[HEAP_CHUNK:]
                maxes.insert(i, chunk[-1])
        elif maxes and len(chunks[-1]) < HEAP_CHUNK:  # most events sort last
            chunks[-1].append(entry)
            maxes[-1] = entry
        else:
            chunks.append([entry])
            maxes.append(entry)
        return None

    def _kombu_push(self, clock: int, timestamp: float, origin: str, seq: int, task: Task) -> None:
        """Celery's own insert into one sorted list, with kombu's comparison (clock 0 seen)."""
        if not self._heap_kombu:
            self._heap_kombu = True
            self._set_heap(self._live_heap())
        if not self._heap_chunks:
            self._set_heap([])
        heap = self._heap_chunks[0]
        entry = tuple.__new__(KombuEntry, (clock, origin, seq, timestamp, task.uuid, task._heap_id))
        if not heap or KombuEntry.__lt__(heap[-1], entry):
            heap.append(entry)
        else:
            bisect.insort(heap, entry)

    def _set_heap(self, entries: list[Any]) -> None:
        """Make the task heap these sorted entries (one chunk once clock 0 was seen)."""
        size = len(entries) or 1 if self._heap_kombu else HEAP_CHUNK
        self._heap_chunks = [entries[i : i + size] for i in range(0, len(entries), size)]
        if self._heap_kombu and not entries:
            self._heap_chunks = [[]]
        self._heap_maxes = [c[-1] if c else None for c in self._heap_chunks]
        self._heap_len = len(entries)

    def _live_heap(self) -> list[Any]:
        """A copy of the task heap's entries, oldest first (safe while events arrive)."""
        return [e for chunk in self._heap_chunks[:] for e in chunk[:]]

    @property
    def _taskheap(self) -> list[Any]:
        """Celery's ``_taskheap``: the sorted entries, one per task event (a copy)."""
        return [
            e if type(e) is KombuEntry else tuple.__new__(HeapEntry, e) for e in self._live_heap()
        ]

    def rebuild_taskheap(self) -> None:
        """One entry per task in memory, from its current clock, timestamp and origin."""
        tasks = list(self.tasks.values())
        self._heap_kombu = kombu = not all(t.clock for t in tasks)
        seq = self._heap_seq
        entries = [
            (t.clock, t.origin or "", seq + i, t.timestamp or 0.0, t.uuid, t._heap_id)
            for i, t in enumerate(tasks, 1)
        ]
        if kombu:
            entries = [tuple.__new__(KombuEntry, e) for e in entries]
        entries.sort()
        self._set_heap(entries)
        self._heap_seq = seq + len(tasks)

    # -- lookups -------------------------------------------------------------
    def get_or_create_worker(self, hostname: str, **kwargs: Any) -> tuple[Worker, bool]:
        worker = self.workers.peek(hostname)
        if worker is not None:
            self.workers.move_to_end(hostname)  # a lookup refreshes the position, as in Celery
            if kwargs:
                worker.update(kwargs)
            return worker, False
        worker = self.workers[hostname] = self.Worker(hostname, **kwargs)
        return worker, True

    def get_or_create_task(self, uuid: str) -> tuple[Task, bool]:
        if uuid in self.tasks:
            return self.tasks[uuid], False
        task = self.tasks[uuid] = self.Task(uuid, cluster_state=self)
        return task, True

    def itertasks(self, limit: int | None = None) -> Iterator[tuple[str, Task]]:
        for index, row in enumerate(list(self.tasks.items())):
            if limit and index >= limit:
                break
            yield row

    def tasks_by_time(
        self, limit: int | None = None, reverse: bool = True
    ) -> Iterator[tuple[str, Task]]:
        """``(uuid, task)`` in Celery's order, newest first by default.

        As Celery: each task once, where its latest (or, with ``reverse=False``, earliest)
        event sorts by ``(clock, timestamp, origin)``; ``limit`` counts heap entries.
        A task no longer in :attr:`tasks` is left out.
        """
        entries = self._live_heap()
        if reverse:
            entries.reverse()
        seen: set[str] = set()
        peek = self.tasks.peek
        for entry in itertools.islice(entries, 0, limit):
            uuid = entry[4]
            if uuid not in seen:
                task = peek(uuid)
                if task is not None and task._heap_id == entry[5]:  # not an evicted one's
                    seen.add(uuid)
                    yield uuid, task

    tasks_by_timestamp = tasks_by_time

    def _tasks_by_type(
        self, name: str, limit: int | None = None, reverse: bool = True
    ) -> Iterator[tuple[str, Task]]:
        found = ((u, t) for u, t in self.tasks_by_time(reverse=reverse) if t.name == name)
        return _islice(found, limit)

    def _tasks_by_worker(
        self, hostname: str, limit: int | None = None, reverse: bool = True
    ) -> Iterator[tuple[str, Task]]:
        found = (
            (u, t)
            for u, t in self.tasks_by_time(reverse=reverse)
            if t.worker is not None and t.worker.hostname == hostname
        )
        return _islice(found, limit)

    def task_types(self) -> list[str]:
        """Sorted names of every task type seen (names that are not strings by their text)."""
        return sorted(self._seen_types, key=str)

    def alive_workers(self) -> Iterator[Worker]:
        return (w for w in list(self.workers.values()) if w.alive)

    def __repr__(self) -> str:
        return f"<State: events={self.event_count} tasks={self.task_count}>"


def _islice(it: Iterator[_V], limit: int | None) -> Iterator[_V]:
    return itertools.islice(it, 0, limit)


#: The keys a log line shows of an event, with the type a value must have to be
#: shown: it never shows other values (args, kwargs, result, exception and
#: traceback may hold secrets, see redaction), nor one of these of another type.
IDENTIFYING_KEYS: dict[str, type[Any]] = {"type": str, "uuid": str, "hostname": str, "clock": int}


def describe_event(event: Any) -> str:
    """``type='task-failed' uuid='…' hostname='w1' clock=12``: an event, for log lines.

    Only :data:`IDENTIFYING_KEYS` are shown, strings cut to 64 characters, and a
    value of an unexpected type only as its type: no other field value reaches a log.
    """
    if not isinstance(event, Mapping):
        return f"a {type(event).__name__}, not an event"
    parts = []
    try:
        for key, type_ in IDENTIFYING_KEYS.items():
            if key in event:
                parts.append(f"{key}={_log_value(event[key], type_)}")
    except Exception:  # a hostile mapping
        return "an unreadable event"
    return " ".join(parts) or "an event without type, uuid, hostname or clock"


def _log_value(value: Any, expected: type[Any]) -> str:
    if type(value) is not expected:
        return f"<{type(value).__name__}>"
    if expected is str:
        return repr(value[:64]) + ("..." if len(value) > 64 else "")
    return repr(value) if -(10**18) < value < 10**18 else "<huge int>"  # repr(10**5000) raises


def _task_problem(event: Mapping[str, Any], subject: str) -> str | None:
    """Why a task event cannot be applied, or None (one pass for the common, well-formed case)."""
    get = event.get
    uuid, ts, received = get("uuid"), get("timestamp"), get("local_received", _MISSING)
    if (
        subject
        and type(uuid) is str
        and uuid
        and type(get("hostname")) is str
        and type(ts) is float
        and -_INF < ts < _INF
        and type(received) is float
        and -_INF < received < _INF
        and type(get("clock")) is int
        and type(get("name")) in _OPT_STR
        and type(get("parent_id")) in _OPT_STR
        and type(get("root_id")) in _OPT_STR
        and type(get("retries")) in _OPT_INT
        and type(get("runtime")) in _OPT_NUMBER
    ):
        return None
    return _task_problem_detail(event, subject)


def _task_problem_detail(event: Mapping[str, Any], subject: str) -> str | None:
    """The first problem of a task event off the fast path, or None.

    Only what Celery's ``State`` raises on is a problem (values it merely stores, such
    as a string ``runtime`` or an ``int`` clock too big for int64, are kept; the
    converter stores what does not fit its column as null and counts it).
    """
    if not subject:
        return "task event without a subject"
    get = event.get
    uuid = get("uuid")
    if type(uuid) is not str or not uuid:
        return "task event without a uuid"
    if type(get("hostname")) is not str:
        return "task event without a hostname"
    for key in ("timestamp", "local_received", "clock"):
        if key not in event:
            return f"task event without {key}"
    # A task event is its worker's heartbeat with the two times swapped, as in Celery.
    if subject != "sent" and _heartbeat_problem(event["local_received"], event["timestamp"]):
        return "task event with a non-numeric timestamp or local_received"
    if not (_hashable(get("name")) and _hashable(get("parent_id"))):
        return "task event with an unhashable name or parent_id"
    return None


def _heartbeat_problem(timestamp: Any, local_received: Any) -> bool:
    """Whether a worker's heartbeat from these values fails (Celery raises there too).

    Celery skips the heartbeat when either is falsy, else needs ``int()`` of both and
    compares ``local_received`` with the earlier heartbeats (so it must be a number).
    """
    if not local_received or not timestamp:
        return False
    if type(local_received) not in _HEARTBEAT or not _finite(local_received):
        return True
    try:
        int(timestamp)
    except (TypeError, ValueError, OverflowError):
        return True
    return False


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _worker_problem(event: Mapping[str, Any], subject: str) -> str | None:
    """Why a worker event cannot be applied, or None.

    As for tasks, only what breaks Celery's ``State`` is a problem, and a ``freq``
    that is not a finite number (Celery stores it, then fails to compute ``alive``).
    """
    if not subject:
        return "worker event without a subject"
    get = event.get
    if type(get("hostname")) is not str:
        return "worker event without a hostname"
    if any(type(key) is not str for key in event):
        return "worker event with a non-string key"
    if "timestamp" not in event or "local_received" not in event:
        return "worker event without a timestamp or local_received"
    if subject != "offline" and _heartbeat_problem(event["timestamp"], event["local_received"]):
        return "worker event with a non-numeric timestamp or local_received"
    if "freq" in event and (type(event["freq"]) not in _HEARTBEAT or not _finite(event["freq"])):
        return "worker event with a non-numeric freq"
    return None


def event_problem(event: Any) -> str | None:
    """Why :meth:`State.event` would reject ``event``, or None if it would apply it (pure)."""
    try:
        type_ = event["type"]
    except (TypeError, KeyError, IndexError):
        return "event without a type" if isinstance(event, Mapping) else "event is not a dict"
    if type(type_) is not str:
        return "event type is not a string"
    group, _, subject = type_.partition("-")
    if group == "task":
        return _task_problem(event, subject)
    if group == "worker":
        return _worker_problem(event, subject)
    return None
