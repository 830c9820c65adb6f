"""Parse Celery-style rate strings ("10/m") into a token bucket."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
ACCEPTED = "'N/s', 'N/m', 'N/h', or a positive number per second (e.g. 10, '0.5', '100/m')"


def parse_rate(value: object) -> float:
    """Return ``value`` as events per second, or raise ValueError naming the accepted forms."""
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, (int, float)):
            per_second = float(value)
        elif isinstance(value, str):
            text = value.strip()
            count, _, unit = text.partition("/")
            per_second = (
                float(count) / _UNITS[unit.strip() or "s"] if unit or "/" not in text else -1
            )
        else:
            raise ValueError
    except (ValueError, KeyError):
        per_second = -1.0
    if not (per_second > 0 and math.isfinite(per_second)):
        raise ValueError(f"invalid maxrate {value!r}: expected {ACCEPTED}")
    return per_second


class TokenBucket:
    """A bucket of ``capacity`` tokens (full at start) refilled at ``fill_rate`` per second."""

    def __init__(
        self,
        fill_rate: float,
        capacity: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fill_rate = float(fill_rate)
        self.capacity = float(capacity)
        self.clock = clock
        self._tokens = self.capacity
        self._last = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.fill_rate)
        self._last = now

    def can_consume(self, tokens: float = 1.0) -> bool:
        """Take ``tokens`` if available; returns whether they were taken."""
        with self._lock:
            self._refill()
            if self._tokens >= tokens:
                self._tokens -= tokens
                return True
            return False

    def expected_time(self, tokens: float = 1.0) -> float:
        """Seconds until ``tokens`` can be consumed."""
        with self._lock:
            self._refill()
            return max(0.0, (tokens - self._tokens) / self.fill_rate)

    def __repr__(self) -> str:
        return f"<TokenBucket {self.fill_rate:g}/s capacity={self.capacity:g}>"
