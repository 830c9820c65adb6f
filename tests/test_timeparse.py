"""Times and durations as users type them: the µs rounding rule and the one duration rule."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archiver.errors import ArchiverError
from archiver.timeparse import parse_duration, parse_time, to_micros

NANOS = st.integers(-(2**62), 2**62)


@settings(max_examples=300, deadline=None)
@given(instant=NANOS, value=st.integers(-(2**52), 2**52))
def test_to_micros_keeps_comparisons_with_microsecond_values_exact(instant, value):
    """For every µs value v: v >= t <=> v >= to_micros(t), and v < t <=> v < to_micros(t)."""
    ts = pd.Timestamp(instant, unit="ns", tz="UTC")
    micros = to_micros(ts)
    assert (value * 1000 >= instant) == (value >= micros)
    assert (value * 1000 < instant) == (value < micros)
    assert to_micros(pd.Timedelta(instant, unit="ns")) == micros


@pytest.mark.parametrize("text", ["30", "30.5", " 7 "])
def test_a_duration_needs_a_unit(text):
    """A bare number is refused (seconds? days?) with a one-line error naming the fix."""
    with pytest.raises(ArchiverError, match=r"use a number and a unit, such as 30d"):
        parse_duration(text, what="older_than")


def test_durations_with_units_and_timedeltas():
    """Units, ISO 8601 and timedeltas give the same Timedelta."""
    assert parse_duration("1d12h") == parse_duration("P1DT12H") == pd.Timedelta(hours=36)
    assert parse_duration(pd.Timedelta("90s")) == pd.Timedelta(seconds=90)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("01/12/2026", "ambiguous date '01/12/2026': use ISO 8601, e.g. 2026-12-01"),
        ("13/01/2026 10:00", "ambiguous date '13/01/2026': use ISO 8601, e.g. 2026-01-13"),
        ("1.2.26", "ambiguous date '1.2.26': use ISO 8601, e.g. 2026-02-01"),
        ("2026/12/01T10:00", "ambiguous date '2026/12/01': use ISO 8601, e.g. 2026-12-01"),
        ("32/13/2026", "invalid time '32/13/2026': give an ISO time"),
    ],
)
def test_non_iso_numeric_dates_are_refused(text, message):
    """Day-first or month-first is the reader's guess: refused, naming the ISO form."""
    with pytest.raises(ArchiverError, match=f"^{re.escape(message)}"):
        parse_time(text)


def test_iso_and_relative_times_still_parse():
    """ISO dates and times, and durations ago, are read as before."""
    now = pd.Timestamp("2026-11-25T12:00", tz="UTC")
    assert parse_time("2026-12-01") == pd.Timestamp("2026-12-01", tz="UTC")
    assert parse_time("2026-12-01T10:00+01:00") == pd.Timestamp("2026-12-01T09:00", tz="UTC")
    assert parse_time("2h", now=now) == now - pd.Timedelta(hours=2)
    assert parse_time("1d", now=now) == now - pd.Timedelta(days=1)


@pytest.mark.parametrize("value", [float("nan"), np.float32("nan"), np.nan, pd.NaT])
def test_nan_is_an_invalid_time_not_an_open_bound(value):
    """A NaN or NaT start/end is refused: it used to mean "no bound" and read everything."""
    with pytest.raises(ArchiverError, match="invalid time"):
        parse_time(value)
