"""A timer driven by the replayed clock, so a fast replay still snapshots every ``freq``
seconds of event time."""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable
from typing import Any

from .timer import Entry

logger = logging.getLogger("archiver.replay")  # the name users configure: unchanged

#: How many missed beats of one entry a single clock jump may run (see ReplayTimer).
MAX_CATCHUP = 1000
#: Timestamps outside [MIN_TIMESTAMP, MAX_TIMESTAMP) (1970 .. year 5138) never move the clock.
MIN_TIMESTAMP = 0.0
MAX_TIMESTAMP = 1e11
#: A forward jump of more than this (seconds), and the first timestamp of a replay...
MAX_JUMP = 86_400.0
#: ...move the clock only once this many events in a row agree (within MAX_JUMP).
CONFIRM = 3


class ReplayClock:
    """The rule for a replay's clock: which event timestamps move it (pure, no I/O).

    Give :meth:`offer` the timestamp of each event the State accepts. The clock
    follows the latest one, except that the first timestamp, and one more than
    ``max_jump`` ahead of the clock, are taken only once ``confirm`` such events in
    a row lie within ``max_jump`` of each other (an event near the clock in
    between starts the count again). So one outlier (year 2100, or a client with a
    bad clock) never moves the clock, while a real gap (a recording paused for
    days) does. Timestamps before 1970 or from year 5138 never count.
    """

    def __init__(self, *, max_jump: float = MAX_JUMP, confirm: int = CONFIRM) -> None:
        if confirm < 1:
            raise ValueError(f"confirm must be >= 1, got {confirm!r}")
        self.max_jump, self.confirm = max_jump, confirm
        #: The clock (epoch seconds), None until started.
        self.now: float | None = None
        #: The first timestamp of the replay's confirmed run (the clock's start).
        self.start: float | None = None
        #: An unconfirmed jump: its first timestamp, its latest one, and how many agree.
        self.pending: tuple[float, float, int] | None = None

    def offer(self, ts: Any) -> float | None:
        """Take an accepted event's timestamp; returns the new clock if it moved, else None."""
        if not ((type(ts) is float or type(ts) is int) and MIN_TIMESTAMP <= ts < MAX_TIMESTAMP):
            return None  # NaN and inf never compare; bool is no timestamp
        now = self.now
        if now is not None and abs(ts - now) <= self.max_jump:
            self.pending = None
            if ts > now:
                self.now = ts
                return ts
            return None
        if now is not None and ts < now:
            return None  # far behind the clock: never moves it
        pending = self.pending
        if pending is not None and abs(ts - pending[0]) <= self.max_jump:
            first, latest, votes = pending[0], max(pending[1], ts), pending[2] + 1
        else:
            first, latest, votes = ts, ts, 1
        if votes < self.confirm:
            self.pending = (first, latest, votes)
            return None
        self.pending = None
        if now is None:
            self.start = first
        self.now = latest
        return latest

    def finish(self) -> float | None:
        """The clock at the end: an unconfirmed start is taken then (a short replay)."""
        if self.now is None and self.pending is not None:
            self.start, self.now = self.pending[0], self.pending[1]
            self.pending = None
        return self.now


class ReplayTimer:
    """Celery-compatible timer whose time is moved by :meth:`advance`.

    ``now`` is the replayed clock (epoch seconds, ``None`` until the first
    :meth:`advance`); pass ``lambda: timer.now`` as the camera's clock so that
    snapshots carry event time. Entries first fall due one period after the first
    event, then every period of event time, as a live timer would.

    A quiet stretch in the events runs every beat it covers (each snapshot at its
    own time) up to ``max_catchup`` beats per entry; beyond that (a clock jump: a
    recording paused for hours, or a bogus timestamp) the oldest missed beats are
    skipped, keeping the phase, and counted in :attr:`skipped`.
    """

    def __init__(self, start: float | None = None, *, max_catchup: int = MAX_CATCHUP) -> None:
        if max_catchup < 1:
            raise ValueError(f"max_catchup must be >= 1, got {max_catchup!r}")
        self.now = start
        self.max_catchup = max_catchup
        self.skipped = 0
        #: Entries that raised (logged; each keeps its schedule).
        self.errors = 0
        self._queue: list[tuple[float, int, Entry]] = []
        self._pending: list[Entry] = []
        self._seq = itertools.count()

    def call_repeatedly(
        self, secs: float, fun: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Entry:
        """Call ``fun(*args, **kwargs)`` every ``secs`` seconds of replayed time."""
        secs = float(secs)
        if not secs > 0:
            raise ValueError(f"timer interval must be > 0 seconds, got {secs!r}")
        entry = Entry(fun, float(secs), args, kwargs)
        if self.now is None:  # scheduled once the first event sets the clock
            self._pending.append(entry)
        else:
            heapq.heappush(self._queue, (self.now + secs, next(self._seq), entry))
        return entry

    @property
    def next_due(self) -> float:
        """When :meth:`advance` next has something to run (``-inf`` before the first one)."""
        if self.now is None:
            return -math.inf
        return self._queue[0][0] if self._queue else math.inf

    def advance(self, to: float) -> None:
        """Move the clock to ``to``, running every entry that falls due up to and at ``to``.

        The clock never goes back: an earlier ``to`` changes nothing.
        """
        if self.now is None:
            self.now = to
            for entry in self._pending:
                heapq.heappush(self._queue, (to + entry.secs, next(self._seq), entry))
            self._pending = []
            return
        queue = self._queue
        while queue and queue[0][0] <= to:
            due, _, entry = heapq.heappop(queue)
            if entry.cancelled:
                continue
            behind = int((to - due) // entry.secs)  # further beats of this entry due by ``to``
            if behind >= self.max_catchup:
                skip = behind - self.max_catchup + 1
                logger.warning(
                    "Replayed clock jumped %.0f s ahead; skipping %d runs of %r",
                    to - due,
                    skip,
                    entry,
                )
                self.skipped += skip
                due += skip * entry.secs
            self.now = due
            try:
                entry()
            except Exception as exc:
                self.errors += 1
                logger.exception("Error in replayed timer entry %r: %r", entry, exc)
            if not entry.cancelled:
                heapq.heappush(queue, (due + entry.secs, next(self._seq), entry))
        if to > self.now:
            self.now = to

    def __len__(self) -> int:
        return sum(1 for _, _, e in self._queue if not e.cancelled) + sum(
            1 for e in self._pending if not e.cancelled
        )
