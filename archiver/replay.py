"""A timer driven by the replayed clock, so a fast replay still snapshots every ``freq``
seconds of event time."""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


class ReplayEntry:
    __slots__ = ("args", "cancelled", "fun", "kwargs", "secs")

    def __init__(self, secs: float, fun: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        self.secs, self.fun, self.args, self.kwargs = secs, fun, args, kwargs
        self.cancelled = False

    def __call__(self) -> Any:
        return self.fun(*self.args, **self.kwargs)

    def cancel(self) -> None:
        self.cancelled = True


class ReplayTimer:
    """Celery-compatible timer whose time is moved by :meth:`advance`.

    ``now`` is the replayed clock (epoch seconds); pass ``lambda: timer.now`` as the
    camera's clock so that snapshots carry event time.
    """

    def __init__(self, start: float | None = None) -> None:
        self.now = start
        self._queue: list[tuple[float, int, ReplayEntry]] = []
        self._seq = itertools.count()

    def call_repeatedly(self, secs: float, fun: Callable[..., Any], *args: Any, **kwargs: Any):
        entry = ReplayEntry(float(secs), fun, args, kwargs)
        if self.now is not None:
            heapq.heappush(self._queue, (self.now + entry.secs, next(self._seq), entry))
        else:  # scheduled once the first event sets the clock
            heapq.heappush(self._queue, (float("nan"), next(self._seq), entry))
        return entry

    def advance(self, to: float) -> None:
        """Move the clock to ``to``, running every entry that falls due on the way."""
        if self.now is None:
            self.now = to
            pending = [e for _, _, e in self._queue]
            self._queue = []
            for entry in pending:
                heapq.heappush(self._queue, (to + entry.secs, next(self._seq), entry))
            return
        queue = self._queue
        while queue and queue[0][0] <= to:
            due, _, entry = heapq.heappop(queue)
            if entry.cancelled:
                continue
            self.now = due
            try:
                entry()
            except Exception as exc:
                logger.exception("Error in replayed timer entry %r: %r", entry.fun, exc)
            if not entry.cancelled:
                heapq.heappush(queue, (due + entry.secs, next(self._seq), entry))
        self.now = max(self.now, to)
