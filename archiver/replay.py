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

logger = logging.getLogger(__name__)

#: How many missed beats of one entry a single clock jump may run (see ReplayTimer).
MAX_CATCHUP = 1000


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
                logger.exception("Error in replayed timer entry %r: %r", entry, exc)
            if not entry.cancelled:
                heapq.heappush(queue, (due + entry.secs, next(self._seq), entry))
        if to > self.now:
            self.now = to

    def __len__(self) -> int:
        return sum(1 for _, _, e in self._queue if not e.cancelled) + sum(
            1 for e in self._pending if not e.cancelled
        )
