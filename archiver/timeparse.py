"""Durations ("30d", "1d12h", "P1D") and times (ISO, epoch, "2h" ago) as users type them."""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from datetime import date, datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from .errors import ArchiverError

_SECONDS = {
    **dict.fromkeys(("us",), 1e-6),
    **dict.fromkeys(("ms",), 1e-3),
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600.0),
    **dict.fromkeys(("d", "day", "days"), 86400.0),
    **dict.fromkeys(("w", "week", "weeks"), 604800.0),
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]+)")
_WHOLE = re.compile(r"^(?:(?:\d+(?:\.\d*)?|\.\d+)\s*[a-z]+\s*)+$")
TIME_HELP = "give an ISO time (2026-11-25T10:00) or a duration ago (2h, 7d)"
#: Numeric dates that are not ISO 8601 (``01/12/2026``, ``1.12.26``, ``01-12-2026``,
#: ``2026/12/01``): day-first or month-first depends on the reader, so they are refused.
_NUMERIC_DATE = re.compile(r"^(\d{1,4})([/.\-])(\d{1,2})\2(\d{1,4})(?=$|[\sT])")
#: Durations and times must stay well inside pandas' nanosecond range (1677-2262).
MAX_DURATION = pd.Timedelta(days=100 * 365)
_OUT_OF_RANGE = (OverflowError, pd.errors.OutOfBoundsDatetime, pd.errors.OutOfBoundsTimedelta)


def duration_or_none(text: str) -> pd.Timedelta | None:
    """``"2h"``, ``"1d12h"``, ``"90 seconds"``, ISO ``"P1D"`` as a Timedelta; None if not one."""
    text = text.strip().lower()
    if text.startswith("p"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return pd.Timedelta(text.upper())
        except ValueError:
            return None
    if not _WHOLE.match(text):
        return None
    seconds = 0.0
    for number, unit in _PART.findall(text):
        if unit not in _SECONDS:
            return None
        seconds += float(number) * _SECONDS[unit]
    return pd.Timedelta(seconds=seconds)  # raises OverflowError beyond ~292 years


def parse_duration(value: Any, *, what: str = "a duration") -> pd.Timedelta:
    """A positive Timedelta from a string such as ``"30d"`` or a timedelta; else ArchiverError.

    The one rule for durations users type: a number needs a unit (``"30"`` is refused:
    30 seconds? days?), and the duration must be positive and under 100 years.
    """
    delta: pd.Timedelta | None
    if isinstance(value, pd.Timedelta):
        delta = value
    elif hasattr(value, "total_seconds"):
        delta = pd.Timedelta(value)
    else:
        try:
            delta = duration_or_none(str(value))
        except _OUT_OF_RANGE:
            delta = MAX_DURATION * 2
        if delta is None:
            raise ArchiverError(
                f"invalid duration {str(value).strip()!r} for {what}: use a number and a unit, "
                "such as 30d, 12h, 90m or 1d12h"
            )
    if delta <= pd.Timedelta(0):
        raise ArchiverError(f"invalid duration {value!r} for {what}: it must be longer than 0")
    if delta > MAX_DURATION:
        raise ArchiverError(f"invalid duration {value!r} for {what}: it must be under 100 years")
    return delta


def to_micros(ts: pd.Timestamp | pd.Timedelta) -> int:
    """``ts`` in whole microseconds since the epoch (or a duration in µs), rounded up.

    The one rounding rule for instants and durations: rounding up keeps comparisons
    with the archive's µs timestamps exact, for any µs value ``v``:
    ``v >= ts`` <=> ``v >= to_micros(ts)`` and ``v < ts`` <=> ``v < to_micros(ts)``.
    """
    return -(-ts.value // 1000)


def parse_time(value: Any, *, now: Any = None) -> pd.Timestamp | None:
    """A UTC timestamp, or None for None (see :func:`_parse_time`)."""
    try:
        ts = _parse_time(value, now=now)
        if ts is not None:
            ts.value  # noqa: B018  (raises when outside the nanosecond range)
        return ts
    except _OUT_OF_RANGE:
        raise ArchiverError(f"invalid time {value!r}: it is outside the years 1677-2262") from None


def _refuse_ambiguous(text: str) -> None:
    """Raise ArchiverError for a numeric date other than ISO's ``YYYY-MM-DD``.

    pandas would read ``01/12/2026`` month-first without a word; the example in the
    message reads it day-first, to show the ISO order rather than to guess.
    """
    match = _NUMERIC_DATE.match(text)
    if match is None:
        return
    first, sep, middle, last = match.groups()
    if sep == "-" and len(first) == 4 and len(last) <= 2:
        return  # ISO 8601: YYYY-MM-DD
    if len(first) == 4:
        readings = [(first, middle, last)]
    else:
        year = f"20{last}" if len(last) == 2 else last
        readings = [(year, middle, first), (year, first, middle)]  # day first, month first
    for year, month, day in readings:
        with contextlib.suppress(ValueError):
            example = date(int(year), int(month), int(day)).isoformat()
            raise ArchiverError(f"ambiguous date {match.group(0)!r}: use ISO 8601, e.g. {example}")
    # no reading is a date: left to the parser, which says "invalid time"


def _parse_time(value: Any, *, now: Any = None) -> pd.Timestamp | None:
    """A UTC timestamp, or None for None.

    Accepted: ``datetime``/``date``/``pd.Timestamp`` (naive values are taken as UTC),
    ISO 8601 strings, epoch seconds, ``"now"``, and durations meaning "that long ago"
    relative to ``now`` (default: the current time): ``"2h"``, ``"7d"``, ``"90 seconds ago"``.
    """
    if value is None:
        return None
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        if math.isnan(value):  # pandas reads NaN as NaT, which callers took as "no bound"
            raise ArchiverError(f"invalid time {value!r}: {TIME_HELP}")
        return pd.Timestamp(float(value), unit="s", tz="UTC")
    if isinstance(value, str):
        text = value.strip()
        ago = duration_or_none(text.lower().removesuffix("ago")) if text else None
        if ago is not None or text.lower() == "now":
            current = pd.Timestamp(now if now is not None else datetime.now(timezone.utc))
            current = current.tz_localize("UTC") if current.tzinfo is None else current
            return current.tz_convert("UTC") - (ago or pd.Timedelta(0))
        _refuse_ambiguous(text)
        try:
            value = pd.Timestamp(text)
        except (TypeError, ValueError):
            value = pd.NaT
        if value is pd.NaT:
            raise ArchiverError(f"invalid time {text!r}: {TIME_HELP}") from None
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ArchiverError(f"invalid time {value!r}: {TIME_HELP}") from exc
    if ts is pd.NaT:  # type: ignore[comparison-overlap]  # the stubs miss Timestamp(NaT) is NaT
        raise ArchiverError(f"invalid time {value!r}: {TIME_HELP}")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
