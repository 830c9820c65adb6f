"""A small repeating timer on one daemon thread, compatible with Celery's ``call_repeatedly``."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


class Entry:
    """A scheduled repeating call; ``cancel()`` stops it."""

    __slots__ = ("args", "cancelled", "fun", "kwargs", "secs")

    def __init__(
        self, fun: Callable[..., Any], secs: float, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.fun, self.secs, self.args, self.kwargs = fun, secs, args, kwargs
        self.cancelled = False

    def __call__(self) -> Any:
        return self.fun(*self.args, **self.kwargs)

    def cancel(self) -> None:
        self.cancelled = True

    def __repr__(self) -> str:
        return f"<timer.Entry {getattr(self.fun, '__qualname__', self.fun)!r} every {self.secs}s>"


class Timer:
    """Runs repeating entries on one daemon thread, at a fixed rate without drift.

    The thread starts with the first ``call_repeatedly``. An entry that raises is
    logged and keeps its schedule. When an entry overruns its period, missed runs
    are skipped rather than bunched up.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._queue: list[tuple[float, int, Entry]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False
        #: Entries that raised (logged; each keeps its schedule).
        self.errors = 0

    def call_repeatedly(
        self, secs: float, fun: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Entry:
        """Call ``fun(*args, **kwargs)`` every ``secs`` seconds, first one period from now."""
        if secs <= 0:
            raise ValueError(f"timer interval must be > 0 seconds, got {secs!r}")
        entry = Entry(fun, float(secs), args, kwargs)
        with self._cond:
            if self._stopped:
                raise RuntimeError("timer is stopped")
            heapq.heappush(self._queue, (self.clock() + entry.secs, next(self._seq), entry))
            self._ensure_started()
            self._cond.notify()
        return entry

    def _ensure_started(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="archiver.Timer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    while self._queue and self._queue[0][2].cancelled:
                        heapq.heappop(self._queue)
                    if not self._queue:
                        self._cond.wait()
                        continue
                    due = self._queue[0][0]
                    delay = due - self.clock()
                    if delay <= 0:
                        break
                    self._cond.wait(delay)
                if self._stopped:
                    return
                _, _, entry = heapq.heappop(self._queue)
            try:
                entry()
            except Exception as exc:
                self.errors += 1
                logger.exception("Error in timer entry %r: %r", entry, exc)
            now = self.clock()
            nxt = due + entry.secs
            if nxt <= now:  # overran: skip the missed beats, keep the phase
                nxt += ((now - nxt) // entry.secs + 1) * entry.secs
            with self._cond:
                if not entry.cancelled and not self._stopped:
                    heapq.heappush(self._queue, (nxt, next(self._seq), entry))

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the thread; entries that are running finish first."""
        with self._cond:
            self._stopped = True
            self._queue.clear()
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __len__(self) -> int:
        with self._cond:
            return sum(1 for _, _, e in self._queue if not e.cancelled)
