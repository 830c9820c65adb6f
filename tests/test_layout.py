"""The on-disk layout: partition paths and folder names, hidden names, visibility rules."""

from __future__ import annotations

import itertools
from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archiver.layout import (
    CompactInfo,
    Partition,
    is_hidden,
    is_temp,
    live_compacted,
    parse_date,
    parse_hour,
    partition_path,
    visible_names,
)
from archiver.schema import END_PARTITION_US, FIRST_PARTITION_US, HOUR_US

from .helpers import YEAR_702, YEAR_2300

FIRST_HOUR, END_HOUR = FIRST_PARTITION_US // HOUR_US, END_PARTITION_US // HOUR_US


def ts(text: str) -> float:
    """Seconds since the epoch of an ISO time read as UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def parse(path: str) -> Partition:
    """The partition a ``date=.../hour=...`` path names, as the readers parse it."""
    day, hour = path.split("/")
    parsed_day, parsed_hour = parse_date(day), parse_hour(hour)
    assert parsed_day is not None and parsed_hour is not None, path
    return Partition("tasks", parsed_day, parsed_hour, path)


def format_(partition: Partition) -> str:
    """The path the sink writes for the partition's hour."""
    return partition_path(partition.start_us // HOUR_US)


# -- partition paths: format/parse round trip ---------------------------------------------
#: Canonical partition paths: a day in range and an hour, not zero-padded.
canonical_paths = st.builds(
    lambda day, hour: f"date={day:%Y-%m-%d}/hour={hour}",
    st.dates(date(1970, 1, 1), date(2261, 12, 31)),
    st.integers(0, 23),
)


@settings(max_examples=300, deadline=None)
@given(path=canonical_paths)
def test_format_of_parse_is_the_path(path):
    """Every canonical partition path parses to a partition the sink writes back as that path."""
    assert format_(parse(path)) == path


@settings(max_examples=300, deadline=None)
@given(us=st.integers(FIRST_PARTITION_US, END_PARTITION_US - 1))
def test_parse_of_format_covers_the_time(us):
    """The partition the sink writes a time into, parsed back, spans that time's hour."""
    partition = parse(partition_path(us // HOUR_US))
    assert partition.start_us <= us < partition.end_us
    assert partition.start_us % HOUR_US == 0 and partition.end_us - partition.start_us == HOUR_US
    assert not partition.ended_by(us) and partition.ended_by(partition.end_us)


@settings(max_examples=200, deadline=None)
@given(hour=st.integers(FIRST_HOUR, END_HOUR - 1))
def test_readers_accept_every_partition_the_sink_writes(hour):
    """One range for both: a folder the sink makes is never "not a partition folder"."""
    day, hour_name = partition_path(hour).split("/")
    assert (parse_date(day), parse_hour(hour_name)) == (day[5:], int(hour_name[5:]))
    assert Partition("tasks", day[5:], int(hour_name[5:]), "").start_us == hour * HOUR_US


def test_partitions_outside_the_range_are_written_by_no_one():
    """partition_path refuses the hours just outside the range, and parse_date their days."""
    for hour in (FIRST_HOUR - 1, END_HOUR):
        with pytest.raises(ValueError, match="outside the years"):
            partition_path(hour)
    assert parse_date("date=1969-12-31") is None and parse_date("date=2262-01-01") is None
    assert parse_date("date=2261-12-31") == "2261-12-31"


def test_partition_path_refuses_years_outside_1970_to_2261():
    """The first and last hours of the range have paths; years 702 and 2300 raise ValueError."""
    assert partition_path(0) == "date=1970-01-01/hour=0"
    assert partition_path(END_HOUR - 1) == "date=2261-12-31/hour=23"
    for hour in (-1, int(YEAR_702 // 3600), END_HOUR, int(YEAR_2300 // 3600)):
        with pytest.raises(ValueError, match=r"outside the years 1970\.\.2261"):
            partition_path(hour)


def test_partition_path_is_utc_and_hour_is_not_zero_padded():
    """The path is the UTC hour of the bucket, written ``hour=7``, not ``hour=07``."""
    hour = int(ts("2026-03-01T07:59:59") // 3600)
    assert partition_path(hour) == "date=2026-03-01/hour=7"
    assert partition_path(int(ts("2026-03-01T23:00:00") // 3600)) == "date=2026-03-01/hour=23"


@pytest.mark.parametrize(
    "name",
    [
        "date=2026-02-30",  # no such day
        "date=2026-13-01",
        "date=26-11-25",
        "date=2026-11-25x",
        "date=\uff12\uff10\uff12\uff16-11-25",  # full-width: int() takes them
        "date=2300-01-01",  # past the range
        "Date=2026-11-25",
        "",
    ],
)
def test_parse_date_refuses_what_is_not_a_partition_day(name):
    """A folder name that is not ``date=YYYY-MM-DD`` with a real day in range parses to None."""
    assert parse_date(name) is None


@pytest.mark.parametrize(
    "name", ["hour=24", "hour=", "hour=123", "hour=-1", "hour=\u0663", "hour=1 "]
)
def test_parse_hour_refuses_what_is_not_an_hour(name):
    """Only ``hour=0`` .. ``hour=23`` in ASCII digits parse."""
    assert parse_hour(name) is None


def test_partition_overlaps_half_open_ranges():
    """An hour overlaps [lo, hi) unless the range ends at its start or starts at its end."""
    p = parse("date=2026-11-25/hour=15")
    start = int(ts("2026-11-25T15:00:00")) * 10**6
    assert p.start_us == start and p.end_us == start + HOUR_US
    assert p.overlaps(None, None) and p.overlaps(start + HOUR_US - 1, None)
    assert not p.overlaps(start + HOUR_US, None) and not p.overlaps(None, start)
    assert p.overlaps(start - 1, start + 1)
    later = datetime(2026, 11, 25, 15, tzinfo=timezone.utc) + timedelta(hours=1)
    assert partition_path(p.end_us // HOUR_US) == f"date={later:%Y-%m-%d}/hour={later.hour}"


# -- names -------------------------------------------------------------------------------------
def test_hidden_and_temporary_names():
    """Dot and underscore names are hidden; only ``.part-*.tmp`` ones are archiver's temporaries."""
    assert is_hidden(".part-x.tmp") and is_hidden("_quarantine") and is_hidden(".hour=3.expired-1")
    assert not is_hidden("part-x.parquet") and not is_hidden("date=2026-11-25")
    assert is_temp(".part-20261125T150000-1.parquet.tmp")
    assert not is_temp(".part-x.parquet") and not is_temp("part-x.tmp") and not is_temp("_x.tmp")


# -- visibility of compacted files ------------------------------------------------------------
INPUTS = {"a.parquet", "b.parquet", "c.parquet"}
GROUP = {"m1-compact-.parquet", "m2-compact-.parquet"}
INFOS = {
    "m1-compact-.parquet": CompactInfo(frozenset({"a.parquet", "b.parquet"}), frozenset(GROUP), 2),
    "m2-compact-.parquet": CompactInfo(frozenset({"c.parquet"}), frozenset(GROUP), 1),
}


def test_a_whole_group_replaces_its_inputs():
    """Once every file of a compacted group is present, its inputs are no longer visible."""
    assert visible_names(INPUTS | GROUP, INFOS) == GROUP
    assert live_compacted(INPUTS | GROUP, INFOS) == GROUP


def test_a_half_committed_group_is_ignored():
    """A group missing a member while an input remains replaces nothing and is not read."""
    present = INPUTS | {"m1-compact-.parquet"}
    assert live_compacted(present, INFOS) == set()
    assert visible_names(present, INFOS) == INPUTS


def test_a_member_compacted_later_leaves_the_rest_valid():
    """With every input gone, a group member missing (compacted again) keeps the others live."""
    present = {"m1-compact-.parquet", "n-compact-.parquet"}
    infos = {**INFOS, "n-compact-.parquet": CompactInfo(frozenset(), frozenset(), 1)}
    assert visible_names(present, infos) == present


# Every subset of a compaction's five files: 32 cases, so all of them rather than a sample.
@pytest.mark.parametrize(
    "present",
    [set(c) for n in range(6) for c in itertools.combinations(sorted(INPUTS | GROUP), n)],
)
def test_every_row_is_visible_exactly_once(present):
    """Whatever subset of a compaction's files is present, no row shows twice or goes missing."""
    visible = visible_names(present, INFOS)
    assert visible <= present
    for name in visible & GROUP:  # a visible compacted file hides what it replaces
        assert not (INFOS[name].replaces & visible)
    if present >= INPUTS:  # nothing deleted yet: every row is still readable, once
        shown = [i for i in INPUTS if i in visible]
        shown += [r for m in visible & GROUP for r in INFOS[m].replaces]
        assert sorted(shown) == sorted(INPUTS)
