"""The converter's bookkeeping between snapshots: which rows changed, and tasks per state.

:class:`ChangeDetector` chooses the task and worker rows a snapshot writes (those
changed since the previous snapshot, or all of them); :class:`StateCounts` keeps the
number of tasks per state without reading every task at every snapshot. Both are
pure: they read the state's objects and never write them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import repeat
from operator import attrgetter, itemgetter
from typing import Any, Literal

from . import schema as S

Mode = Literal["changes", "full"]
#: A worker and whether it is alive (None: its heartbeat or freq is not a number).
WorkerRow = tuple[Any, "bool | None"]

# What tells that an event touched a task, in a state that does not track changes
# itself (Celery's State): every task event sets the time field named after it
# (``received``, ``succeeded``...), and every event also merges its ``clock`` and/or
# sets ``state`` and ``timestamp``, except a late ``task-received``, which still sets
# ``received``. Few fields, because it is read from every task at every snapshot.
_TASK_SIGNATURE = attrgetter("state", "timestamp", "clock", *S.TASK_TIME_FIELDS[:-1])
_STATE = attrgetter("state")
_FIRST = itemgetter(0)  # the state, in a signature
_MISSING = object()


def current_tasks(state: Any) -> Mapping[str, Any]:
    """A state's tasks by uuid, without touching LRU order or locks."""
    tasks: Mapping[str, Any] = getattr(state.tasks, "data", state.tasks)
    return tasks


class ChangeDetector:
    """The task and worker rows a snapshot writes.

    ``mode="changes"`` selects what changed since the previous snapshot: with a
    state that reports its changes (``archiver.State.take_changes()``) those tasks;
    with any other (Celery's) the tasks whose signature (state, times, clock)
    differs from the previous snapshot's. ``mode="full"`` selects everything. A
    worker is selected when its heartbeat, liveness, counters or pid changed.

    The signatures read by :meth:`tasks` and :meth:`workers` count as the previous
    snapshot's only after :meth:`commit`: if building the snapshot fails, the next
    one selects the same rows again.
    """

    def __init__(self, mode: Mode = "changes") -> None:
        if mode not in ("changes", "full"):
            raise ValueError(f"mode must be 'changes' or 'full', got {mode!r}")
        self.mode: Mode = mode
        self._task_sigs: dict[str, tuple[Any, ...]] = {}
        self._worker_sigs: dict[str, tuple[Any, ...]] = {}
        self._new_task_sigs: dict[str, tuple[Any, ...]] | None = None
        self._new_worker_sigs: dict[str, tuple[Any, ...]] = {}

    def tasks(self, state: Any, taken: list[Any] | None) -> list[Any]:
        """The tasks to write; ``taken`` is what the state reported changed (None: it cannot)."""
        current = current_tasks(state)
        self._new_task_sigs = None
        if taken is not None:  # the state tracks its changes
            if self.mode == "changes":
                return taken
            tasks = list(current.values())
            # Changed tasks that the LRU evicted meanwhile are written too.
            tasks.extend(t for t in taken if t.uuid not in current)
            return tasks
        tasks = list(current.values())
        if self.mode == "full":
            return tasks
        previous = self._task_sigs
        sigs = dict(zip([t.uuid for t in tasks], map(_TASK_SIGNATURE, tasks)))
        self._new_task_sigs = sigs
        return [t for t in tasks if previous.get(t.uuid) != sigs[t.uuid]]

    def states_read(self) -> Counter[Any] | None:
        """Tasks per state from the signatures the last :meth:`tasks` read (every task's),
        or None when it read none (a state that tracks its changes, or full mode)."""
        if self._new_task_sigs is None:
            return None
        return Counter(map(_FIRST, self._new_task_sigs.values()))

    def workers(self, rows: Sequence[WorkerRow]) -> list[WorkerRow]:
        """Of every ``(worker, alive)`` in the state, those to write."""
        selected, sigs = [], {}
        previous, full = self._worker_sigs, self.mode == "full"
        for worker, alive in rows:
            beats = worker.heartbeats
            sig = (beats[-1] if beats else None, alive, worker.active, worker.processed, worker.pid)
            sigs[worker.hostname] = sig
            if full or previous.get(worker.hostname) != sig:
                selected.append((worker, alive))
        self._new_worker_sigs = sigs
        return selected

    def commit(self) -> None:
        """The selected rows are written: compare the next snapshot with this one."""
        if self._new_task_sigs is not None:
            self._task_sigs = self._new_task_sigs
        self._worker_sigs = self._new_worker_sigs


class StateCounts:
    """Tasks per state in a state that reports its changes, kept without a full scan.

    Counting ``task.state`` over 100,000 tasks costs ~0.1 s (every task object is
    read from memory); the shutter must cost far less. So the counts are updated
    from the changed tasks, and tasks that left the state (LRU eviction, clear) are
    found by walking the known uuids oldest first, which is where evictions are.
    Anything unexplained (more tasks than known, a change log that dropped entries)
    triggers a full recount, and so does every ``recount_every``-th snapshot: a task
    added without an event (``State.get_or_create_task``) while another is evicted
    leaves the counts off by one until then.
    """

    def __init__(self, recount_every: int = 600) -> None:
        self.recount_every = recount_every
        self._states: dict[str, Any] = {}  # uuid -> state, in first-seen order
        self._counts: Counter[Any] = Counter()
        self._valid = False
        self._since = 0
        self._dropped: Any = None

    @property
    def since_recount(self) -> int:
        """Updates since the last full count (the counts may be off by a few until the next)."""
        return self._since

    def invalidate(self) -> None:
        """Forget the counts: the next :meth:`update` recounts (a snapshot failed)."""
        self._valid = False

    def recount(self, current: Mapping[str, Any]) -> Counter[Any]:
        """Count every task of ``current`` (uuid -> task)."""
        return self.reset(list(current.keys()), list(map(_STATE, current.values())))

    def reset(
        self, uuids: Sequence[str], states: Sequence[Any], *, dropped: Any = _MISSING
    ) -> Counter[Any]:
        """Start again from every task's uuid and state (read anyway, e.g. in full mode);
        ``dropped`` is the state's ``changes_dropped`` at that time."""
        self._states = dict(zip(uuids, states))
        self._counts = Counter(self._states.values())
        self._valid = True
        self._since = 0
        if dropped is not _MISSING:
            self._dropped = dropped
        return self._counts

    def update(
        self, state: Any, current: Mapping[str, Any], uuids: Sequence[str], new: Sequence[Any]
    ) -> Counter[Any]:
        """Apply the changed tasks (their uuids and current states, in one order)."""
        dropped = getattr(state, "changes_dropped", None)
        self._since += 1
        if not self._valid or dropped != self._dropped or self._since >= self.recount_every:
            self._dropped = dropped
            return self.recount(current)
        self._apply_changes(current, uuids, new)
        return self._remove_departed(current)

    def _apply_changes(
        self, current: Mapping[str, Any], uuids: Sequence[str], new: Sequence[Any]
    ) -> None:
        """Move each changed task from its old state's count to its new one's."""
        states, counts = self._states, self._counts
        old = [s for s in map(states.get, uuids, repeat(_MISSING)) if s is not _MISSING]
        counts.subtract(Counter(old))
        present = list(map(current.__contains__, uuids))
        if all(present):
            states.update(zip(uuids, new))
            counts.update(new)
            return
        for uuid, now, here in zip(uuids, new, present):
            if here:
                states[uuid] = now
                counts[now] += 1
            else:
                states.pop(uuid, None)

    def _remove_departed(self, current: Mapping[str, Any]) -> Counter[Any]:
        """Uncount the known tasks no longer in the state (oldest first); recount if unsure."""
        states = self._states
        excess = len(states) - len(current)
        if excess < 0:
            return self.recount(current)
        if excess:
            gone = []
            for uuid in states:
                if uuid not in current:
                    gone.append(uuid)
                    if len(gone) == excess:
                        break
            if len(gone) < excess:
                return self.recount(current)
            self._counts.subtract(Counter(map(states.pop, gone)))
        return self._counts
