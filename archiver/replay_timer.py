"""A timer driven by the replayed clock, so a fast replay still snapshots every ``freq``
seconds of event time."""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Any

from .schema import END_PARTITION_US, FIRST_PARTITION_US
from .timer import Entry

logger = logging.getLogger("archiver.replay")  # the name users configure: unchanged

#: How many missed beats of one entry a single clock jump may run (see ReplayTimer).
MAX_CATCHUP = 1000
#: Timestamps outside [MIN_TIMESTAMP, MAX_TIMESTAMP) never move the clock: the partition
#: range, so that the clock never stamps a snapshot that no folder can hold.
MIN_TIMESTAMP = FIRST_PARTITION_US / 1e6
MAX_TIMESTAMP = END_PARTITION_US / 1e6
#: A step forward of at most this many seconds moves the clock at once.
STEP = 60.0
#: The clock's rule looks at this many of the latest accepted timestamps...
WINDOW = 64
#: ...and starts once it has seen this many, two thirds of them within a step of their
#: median (or at the end of a shorter replay).
START = 9


class ReplayClock:
    """The rule for a replay's clock: which event timestamps move it (pure, no I/O).

    Give :meth:`offer` (or :meth:`seen`, on the hot path) the timestamp of each
    event the State accepts. The clock never goes back. It follows the latest
    timestamp while each step forward is at most ``step`` (a minute); a bigger step
    moves it only as far as the median of the latest ``window`` (64) accepted
    timestamps. So events from one bad clock (one outlier, a burst from one task or
    worker in 2100 or 20 hours ahead) move it at most ``step`` unless they are most
    of the recent stream, while a real gap (a recording paused for days) is taken
    once most of the latest events lie beyond it. The clock starts once ``start``
    (9) timestamps are in and two thirds of them lie within ``step`` of their median,
    at the earliest of those, so first events from year 702 or 2100 are not the
    start. Timestamps outside the partition range (1970..2261) never count.
    """

    def __init__(
        self,
        *,
        step: float = STEP,
        window: int = WINDOW,
        start: int = START,
    ) -> None:
        if window < 1 or not 1 <= start <= window:
            raise ValueError(f"need 1 <= start <= window, got {start!r} and {window!r}")
        self.step, self.min_start = step, start
        #: The clock (epoch seconds), None until started.
        self.now: float | None = None
        #: The clock's first value (where the replay's timer starts).
        self.start: float | None = None
        self.recent: deque[float] = deque(maxlen=window)

    def seen(self, ts: float) -> None:
        """Count an accepted timestamp that the caller already knows is a small step."""
        self.recent.append(ts)

    def offer(self, ts: Any) -> float | None:
        """Take an accepted event's timestamp; returns the new clock if it moved, else None."""
        if not ((type(ts) is float or type(ts) is int) and MIN_TIMESTAMP <= ts < MAX_TIMESTAMP):
            return None  # NaN and inf never compare; bool is no timestamp
        self.recent.append(ts)
        now = self.now
        if now is None:
            return self._begin(quorum=True) if len(self.recent) >= self.min_start else None
        if ts <= now + self.step:
            if ts > now:
                self.now = ts
                return ts
            return None
        target = min(ts, self._median())  # a big step: only as far as most events agree
        if target > now:
            self.now = target
            return target
        return None

    def finish(self) -> float | None:
        """The clock at the end: a replay too short to start its clock starts it here."""
        if self.now is None and self.recent:
            self._begin()
        return self.now

    def estimate(self) -> float | None:
        """The clock, or before it starts the median of the timestamps so far (or None)."""
        if self.now is not None:
            return self.now
        return self._median() if self.recent else None

    def _median(self) -> float:
        ordered = sorted(self.recent)
        return ordered[len(ordered) // 2]

    def _begin(self, *, quorum: bool = False) -> float | None:
        middle = self._median()
        near = [t for t in self.recent if abs(t - middle) <= self.step] or [middle]
        if quorum and 3 * len(near) < 2 * len(self.recent):
            return None
        self.start, self.now = min(near), max(near)
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
        #: True while an entry runs (``now`` is then that entry's beat).
        self.running = False
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
            self.running = True
            try:
                entry()
            except Exception as exc:
                self.errors += 1
                logger.exception("Error in replayed timer entry %r: %r", entry, exc)
            finally:
                self.running = False
            if not entry.cancelled:
                heapq.heappush(queue, (due + entry.secs, next(self._seq), entry))
        if to > self.now:
            self.now = to

    def __len__(self) -> int:
        return sum(1 for _, _, e in self._queue if not e.cancelled) + sum(
            1 for e in self._pending if not e.cancelled
        )
