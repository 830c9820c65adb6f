"""The query layer against archives written by the camera from the recorded events."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import archiver
from archiver import query, rows, timeparse
from archiver.errors import ArchiverError, NoArchiveError
from archiver.schema import SCHEMA_VERSION, TASKS, with_metadata

from .helpers import footer_rows, record_copies, shifted_hours

HOUR = 3600.0
UTC = timezone.utc


# -- building archives -------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_hour(tmp_path_factory, sample_events) -> Path:
    """The sample recorded once: one partition per table."""
    path = tmp_path_factory.mktemp("one") / "archive"
    record_copies(path, [sample_events])
    return path


@pytest.fixture(scope="module")
def three_hours(tmp_path_factory, sample_events) -> Path:
    """The sample recorded three times, an hour apart (hours 15, 16 and 17 UTC)."""
    path = tmp_path_factory.mktemp("three") / "archive"
    record_copies(path, [shifted_hours(sample_events, k) for k in range(3)])
    return path


def copy_archive(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "archive"
    shutil.copytree(src, dst)
    return dst


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


# -- loading -----------------------------------------------------------------------------
def test_load_returns_every_row_with_pandas_dtypes(one_hour):
    """Load returns every row with pandas dtypes."""
    a = archiver.Archive(one_hour)
    tasks = a.load("tasks")
    assert len(tasks) == footer_rows(one_hour, "tasks") > 2000
    assert list(tasks.columns) == TASKS.names  # no date/hour unless asked for
    assert str(tasks["captured_at"].dtype) == "datetime64[us, UTC]"
    for column in ("received", "started", "succeeded", "failed", "timestamp"):
        assert isinstance(tasks[column].dtype, pd.DatetimeTZDtype)
        assert str(tasks[column].dt.tz) == "UTC"
    for column in ("name", "state", "worker"):
        assert isinstance(tasks[column].dtype, pd.CategoricalDtype), column
    assert tasks["retries"].dtype == pd.Int32Dtype()
    assert tasks["clock"].dtype == pd.Int64Dtype()
    assert tasks["runtime"].dtype == np.float64
    assert tasks["captured_at"].is_monotonic_increasing

    workers = a.load("workers")
    assert workers["alive"].dtype == pd.BooleanDtype()
    assert workers["pid"].dtype == pd.Int64Dtype()
    assert isinstance(workers["hostname"].dtype, pd.CategoricalDtype)
    snapshots = a.load("snapshots")
    assert snapshots["event_count"].dtype == pd.Int64Dtype()
    assert snapshots["event_count"].iloc[-1] == 9604

    with_partition = a.load("snapshots", columns=["captured_at", "date", "hour"])
    assert set(with_partition["hour"]) == {15}
    assert set(with_partition["date"]) == {"2026-11-25"}


def test_engines_and_the_one_call_loader(one_hour):
    """Engines and the one call loader."""
    a = archiver.Archive(one_hour)
    table = a.load("snapshots", engine="arrow")
    assert isinstance(table, pa.Table)
    pd.testing.assert_frame_equal(archiver.load(str(one_hour), "snapshots"), query.to_pandas(table))
    pd.testing.assert_frame_equal(archiver.load(one_hour), a.load("tasks"))
    with pytest.raises(ArchiverError, match="unknown engine"):
        a.load("tasks", engine="spark")


def test_time_range_is_start_inclusive_end_exclusive(one_hour):
    """Time range is start inclusive end exclusive."""
    a = archiver.Archive(one_hour)
    snaps = a.load("snapshots", columns=["captured_at"])["captured_at"]
    tasks = a.load("tasks", columns=["captured_at"])["captured_at"]
    t = snaps.iloc[10]
    assert (tasks == t).any()
    after = a.load("tasks", start=t, columns=["captured_at"])["captured_at"]
    before = a.load("tasks", end=t, columns=["captured_at"])["captured_at"]
    assert after.min() == t
    assert before.max() < t
    assert len(after) + len(before) == len(tasks)
    # the same instant in every accepted form
    forms = [
        t,
        t.to_pydatetime(),
        t.tz_convert("Europe/Paris"),
        t.tz_localize(None).to_pydatetime(),  # naive = UTC
        t.isoformat(),
        t.tz_convert("America/New_York").isoformat(),
        t.timestamp(),
    ]
    for form in forms:
        got = a.load("tasks", start=form, end=snaps.iloc[12], columns=["captured_at"])
        assert got["captured_at"].min() == t, form
        assert got["captured_at"].max() < snaps.iloc[12], form
    # below a microsecond: a start 1 ns after t excludes t
    later = a.load("tasks", start=t + pd.Timedelta(1, "ns"), columns=["captured_at"])
    assert later["captured_at"].min() > t
    # empty ranges
    assert a.load("tasks", start=t, end=t).empty
    assert a.load("tasks", start="2030-01-01").empty
    assert list(a.load("tasks", end="2000-01-01").columns) == TASKS.names


def test_relative_and_named_times():
    """Durations ago, 'N seconds ago' and 'now' resolve against the given now."""
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert timeparse.parse_time("2h", now=now) == ts("2026-11-25 10:00")
    assert timeparse.parse_time("7d", now=now) == ts("2026-11-18 12:00")
    assert timeparse.parse_time("30m", now=now) == ts("2026-11-25 11:30")
    assert timeparse.parse_time("1d12h", now=now) == ts("2026-11-24 00:00")
    assert timeparse.parse_time("90 seconds ago", now=now) == ts("2026-11-25 11:58:30")
    assert timeparse.parse_time("1w", now=now) == ts("2026-11-18 12:00")
    assert timeparse.parse_time("now", now=now) == ts("2026-11-25 12:00")
    assert timeparse.parse_time("2026-11-25T10:00") == ts("2026-11-25 10:00")
    assert timeparse.parse_time("2026-11-25T11:00+01:00") == ts("2026-11-25 10:00")
    assert timeparse.parse_time(datetime(2026, 11, 25, 10)) == ts("2026-11-25 10:00")
    assert timeparse.parse_time(pd.Timestamp("2026-11-25").date()) == ts("2026-11-25")
    assert timeparse.parse_time(0) == ts("1970-01-01")
    assert timeparse.parse_time(None) is None
    for bad in ("yesterday-ish", "2h banana", "", "32/13/2026", "5 parsecs"):
        with pytest.raises(ArchiverError, match="invalid time"):
            timeparse.parse_time(bad)


def test_relative_start_against_the_clock(one_hour):
    """Relative start against the clock."""
    a = archiver.Archive(one_hour)
    # the recording is from 2026-11-25: 100000 days ago includes it all
    assert len(a.load("snapshots", start="100000d")) == footer_rows(one_hour, "snapshots")
    assert len(a.load("snapshots", end="100000d")) == 0


def test_ranges_across_partitions(three_hours):
    """Time ranges select exactly the rows in [start, end), across partition boundaries."""
    a = archiver.Archive(three_hours)
    assert [p.hour for p in a.partitions("tasks")] == [15, 16, 17]
    full = a.load("tasks")
    assert len(full) == footer_rows(three_hours, "tasks")
    hour16 = a.load("tasks", start="2026-11-25T16:00", end="2026-11-25T17:00")
    assert len(hour16) == len(full) // 3
    assert hour16["captured_at"].dt.hour.unique().tolist() == [16]
    # a range that crosses a partition boundary, compared with pandas on everything
    start, end = ts("2026-11-25 15:58:00"), ts("2026-11-25 16:57:50")
    got = a.load("tasks", start=start, end=end)
    want = full[(full["captured_at"] >= start) & (full["captured_at"] < end)]
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))
    assert set(got["captured_at"].dt.hour) == {15, 16}
    # start only, end only
    assert len(a.load("tasks", start="2026-11-25T16:00")) == 2 * len(full) // 3
    assert len(a.load("tasks", end="2026-11-25T16:00")) == len(full) // 3


def _plant_garbage(archive: Path, table: str, partition: str) -> Path:
    directory = archive / table / partition
    directory.mkdir(parents=True, exist_ok=True)
    bad = directory / "part-20261125T000000-garbage-000001.parquet"
    bad.write_bytes(b"this is not a parquet file" * 100)
    return bad


def test_partitions_outside_the_range_are_never_opened(three_hours, tmp_path):
    """Partitions outside the range are never opened."""
    path = copy_archive(three_hours, tmp_path)
    _plant_garbage(path, "tasks", "date=2026-11-25/hour=17")
    _plant_garbage(path, "tasks", "date=2026-11-24/hour=3")
    _plant_garbage(path, "tasks", "date=2026-11-26/hour=0")
    a = archiver.Archive(path, on_bad_file="raise")
    # any read that has to open those files fails...
    with pytest.raises(ArchiverError, match=r"damaged .*garbage"):
        a.load("tasks")
    with pytest.raises(ArchiverError, match=r"damaged .*garbage"):
        a.load("tasks", start="2026-11-25T16:30")
    # ...so these never opened them
    inside = a.load("tasks", start="2026-11-25T15:00", end="2026-11-25T17:00")
    assert len(inside) == 2 * len(archiver.Archive(three_hours).load("tasks")) // 3
    assert len(a.latest("tasks", as_of="2026-11-25T16:59", start="2026-11-25T15:00")) == 2 * 2110
    dask_frame = a.load("tasks", start="2026-11-25T16:00", end="2026-11-25T17:00", engine="dask")
    assert dask_frame.npartitions == 1
    assert len(dask_frame.compute()) == len(inside) // 2


def _row_group_span(rg) -> tuple[int, int]:
    starts, ends = [], []
    for i in range(rg.num_columns):
        col = rg.column(i)
        start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
        starts.append(start)
        ends.append(start + col.total_compressed_size)
    return min(starts), max(ends)


def test_row_group_statistics_prune_inside_a_file(one_hour, tmp_path):
    """Row group statistics prune inside a file."""
    path = copy_archive(one_hour, tmp_path)
    (f,) = (path / "tasks").rglob("*.parquet")
    table = pq.read_table(f)
    pq.write_table(table, f, row_group_size=1500, compression="zstd")
    meta = pq.read_metadata(f)
    assert meta.num_row_groups == 3
    second_starts = pd.Timestamp(meta.row_group(1).column(0).statistics.min).tz_convert("UTC")
    data = bytearray(f.read_bytes())
    for i in (1, 2):  # destroy the pages of the later row groups; the footer stays intact
        lo, hi = _row_group_span(meta.row_group(i))
        data[lo:hi] = b"\xff" * (hi - lo)
    f.write_bytes(bytes(data))
    a = archiver.Archive(path)
    early = a.load("tasks", end=second_starts)
    assert len(early) == (table.column("captured_at").to_pandas() < second_starts).sum()
    with pytest.raises(ArchiverError, match=r"damaged .*part-.*deserialize"):
        a.load("tasks", start=second_starts, on_bad_file="raise")


# -- filters and projections -------------------------------------------------------------
def test_filters_in_both_forms(one_hour):
    """Tuple filters and dataset expressions select what pandas selects."""
    a = archiver.Archive(one_hour)
    cols = ["captured_at", "uuid", "name", "state", "started", "exception", "retries", "runtime"]
    full = a.load("tasks", columns=cols)
    state = full["state"].astype(object)
    cases = [
        ([("name", "==", "harness.add")], full["name"] == "harness.add"),
        ([("name", "=", "harness.add")], full["name"] == "harness.add"),
        (("state", "!=", "SUCCESS"), state != "SUCCESS"),
        ([("state", "in", ["FAILURE", "RETRY"])], state.isin(["FAILURE", "RETRY"])),
        ([("state", "not in", ("FAILURE", "RETRY"))], ~state.isin(["FAILURE", "RETRY"])),
        (
            [("name", "==", "harness.flaky"), ("state", "==", "RETRY")],
            (full["name"] == "harness.flaky") & (state == "RETRY"),
        ),
        (
            [[("state", "==", "FAILURE")], [("name", "==", "harness.slow")]],
            (state == "FAILURE") | (full["name"] == "harness.slow"),
        ),
        ([("retries", ">", 0)], full["retries"].fillna(0) > 0),
        ([("retries", ">=", "1")], full["retries"].fillna(0) >= 1),
        ([("runtime", "<", 0.001)], full["runtime"] < 0.001),
        ([("runtime", "<=", "0.001")], full["runtime"] <= 0.001),
        (
            [("started", ">=", "2026-11-25T15:57:50")],
            full["started"] >= ts("2026-11-25 15:57:50"),
        ),
        (
            [("started", "<", datetime(2026, 11, 25, 15, 57, 50))],  # naive = UTC
            full["started"] < ts("2026-11-25 15:57:50"),
        ),
        ([("exception", "==", None)], full["exception"].isna()),
        ([("exception", "!=", None)], full["exception"].notna()),
        ([("hour", "==", 15)], pd.Series(True, index=full.index)),
        ([], pd.Series(True, index=full.index)),
    ]
    for filters, mask in cases:
        got = a.load("tasks", columns=cols, filters=filters).reset_index(drop=True)
        want = full[mask.fillna(False).astype(bool)].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want, obj=str(filters))
        # Neither everything nor nothing: the equality above compares a real selection.
        assert 0 < len(got) < len(full) or filters in ([("hour", "==", 15)], []), filters

    expr = ds.field("state").isin(["FAILURE", "RETRY"]) & (ds.field("retries") >= 0)
    by_expr = a.load("tasks", filters=expr).reset_index(drop=True)
    by_tuples = a.load(
        "tasks", filters=[("state", "in", ["FAILURE", "RETRY"]), ("retries", ">=", 0)]
    ).reset_index(drop=True)
    pd.testing.assert_frame_equal(by_expr, by_tuples)
    assert len(by_expr) > 100


def test_filter_errors(one_hour):
    """Unknown columns, operators and uncomparable values raise one-line ArchiverErrors."""
    a = archiver.Archive(one_hour)
    with pytest.raises(ArchiverError, match=r"unknown column.*'nope'"):
        a.load("tasks", filters=[("nope", "==", 1)])
    with pytest.raises(ArchiverError, match=r"unknown column.*'nope'"):
        a.load("tasks", filters=ds.field("nope") == 1)
    with pytest.raises(ArchiverError, match="operator"):
        a.load("tasks", filters=[("state", "~", "x")])
    with pytest.raises(ArchiverError, match="cannot compare column retries"):
        a.load("tasks", filters=[("retries", ">", "many")])
    with pytest.raises(ArchiverError, match=r"cannot compare column started.*ISO time"):
        a.load("tasks", filters=[("started", ">", "someday")])
    with pytest.raises(ArchiverError, match="needs a list"):
        a.load("tasks", filters=[("state", "in", "FAILURE")])
    with pytest.raises(ArchiverError, match="invalid filters"):
        a.load("tasks", filters=42)
    with pytest.raises(ArchiverError, match=r"^cannot read condition 'state ~ FAILURE': use"):
        a.load("tasks", filters="state ~ FAILURE")


def test_projection(one_hour):
    """columns= selects and orders columns, even with a filter on others."""
    a = archiver.Archive(one_hour)
    got = a.load("tasks", columns=["uuid", "state"])
    assert list(got.columns) == ["uuid", "state"]
    assert list(a.load("tasks", columns=["state", "uuid"]).columns) == ["state", "uuid"]
    assert list(a.load("tasks", columns="uuid,runtime").columns) == ["uuid", "runtime"]
    # a filter on a column that is not projected
    failed = a.load("tasks", columns=["uuid"], filters=[("state", "==", "FAILURE")])
    assert list(failed.columns) == ["uuid"]
    assert len(failed) == (a.load("tasks", columns=["state"])["state"] == "FAILURE").sum()
    with pytest.raises(ArchiverError, match=r"unknown column.*'nope'.*columns are: captured_at"):
        a.load("tasks", columns=["uuid", "nope"])


def test_limit_returns_the_first_rows(three_hours):
    """Limit returns the first rows."""
    a = archiver.Archive(three_hours)
    full = a.load("tasks", columns=["uuid", "captured_at"])
    for n in (7, len(full) // 3 + 10, len(full) + 1):  # within a file, across files, all
        head = a.load("tasks", columns=["uuid", "captured_at"], limit=n)
        pd.testing.assert_frame_equal(head, full.head(n))
    assert a.load("tasks", limit=0).empty


def test_missing_archive_and_table(one_hour, tmp_path):
    """A missing archive or table raises NoArchiveError naming it, from every reader."""
    with pytest.raises(NoArchiveError, match="no archive at"):
        archiver.Archive(tmp_path / "nothing").load("tasks")
    with pytest.raises(NoArchiveError, match=r"no table 'taskz'.*snapshots, tasks, workers"):
        archiver.Archive(one_hour).load("taskz")
    with pytest.raises(NoArchiveError, match="no archive at"):
        archiver.load(tmp_path / "nothing")
    with pytest.raises(NoArchiveError, match="no archive at"):
        archiver.Archive(tmp_path / "nothing").latest("tasks")


# -- latest and history ------------------------------------------------------------------
def _celery_state(events: list[dict], before: float | None = None):
    from celery.events.state import State

    state = State()
    for event in events:
        if before is not None and event["timestamp"] >= before:
            break
        state.event(dict(event))
    return state


def _micros(value) -> pd.Timestamp | None:
    if value is None:
        return None
    return pd.Timestamp(round(value * 1e6), unit="us", tz="UTC")


def _nat_to_none(value):
    return None if value is None or value is pd.NaT or pd.isna(value) else value


def assert_latest_matches(latest: pd.DataFrame, celery_state) -> None:
    tasks = celery_state.tasks
    assert len(latest) == len(tasks) > 0
    assert latest["uuid"].is_unique
    assert set(latest["uuid"]) == set(tasks)
    for row in latest.itertuples(index=False):
        task = tasks[row.uuid]
        assert row.state == task.state, row.uuid
        assert _nat_to_none(row.name) == task.name
        worker = task.worker.hostname if task.worker is not None else None
        assert _nat_to_none(row.worker) == worker
        for field in ("sent", "received", "started", "succeeded", "failed", "retried"):
            assert _nat_to_none(getattr(row, field)) == _micros(getattr(task, field)), field
        assert _nat_to_none(row.retries) == task.retries
        if task.runtime is None:
            assert pd.isna(row.runtime)
        else:
            assert row.runtime == pytest.approx(task.runtime)
        assert _nat_to_none(row.exception) == task.exception


def test_latest_is_celery_state_at_the_end(one_hour, sample_events):
    """Latest is celery state at the end."""
    a = archiver.Archive(one_hour)
    latest = a.latest("tasks")
    assert_latest_matches(latest, _celery_state(sample_events))
    assert latest["captured_at"].is_monotonic_increasing
    assert isinstance(latest["state"].dtype, pd.CategoricalDtype)
    assert latest.index.equals(pd.RangeIndex(len(latest)))
    # workers, keyed by hostname
    workers = a.latest("workers")
    celery = _celery_state(sample_events)
    assert set(workers["hostname"]) == set(celery.workers)
    for row in workers.itertuples(index=False):
        assert row.processed == celery.workers[row.hostname].processed
        assert row.pid == celery.workers[row.hostname].pid


def test_latest_as_of_a_midpoint(one_hour, sample_events):
    """Latest as of a midpoint."""
    a = archiver.Archive(one_hour)
    snaps = a.load("snapshots", columns=["captured_at"])["captured_at"]
    mid = snaps.iloc[len(snaps) // 2]
    celery = _celery_state(sample_events, before=mid.timestamp())
    assert 0 < len(celery.tasks) < 2110
    for as_of in (mid, mid.isoformat(), mid.to_pydatetime()):
        latest = a.latest("tasks", as_of=as_of)
        assert latest["captured_at"].max() == mid  # as_of is inclusive
        assert_latest_matches(latest, celery)
    # between two snapshots: the cluster as of the previous one
    between = a.latest("tasks", as_of=mid + pd.Timedelta("500ms"))
    pd.testing.assert_frame_equal(between, a.latest("tasks", as_of=mid))
    # a moment before the first snapshot: nothing yet
    assert a.latest("tasks", as_of=snaps.iloc[0] - pd.Timedelta("1s")).empty


def test_latest_across_partitions_equals_pandas(three_hours):
    """Latest across partitions equals pandas."""
    a = archiver.Archive(three_hours)
    full = a.load("tasks")
    naive = full.sort_values("captured_at", kind="stable").drop_duplicates("uuid", keep="last")
    got = a.latest("tasks")
    assert len(got) == 3 * 2110
    pd.testing.assert_frame_equal(
        got.set_index("uuid").sort_index(), naive.set_index("uuid").sort_index()
    )
    # start: only the entities recorded since then
    recent = a.latest("tasks", start="2026-11-25T17:00")
    assert len(recent) == 2110
    assert recent["captured_at"].min() >= ts("2026-11-25 17:00")


def test_latest_filters_select_among_the_latest_rows(one_hour):
    """Latest filters select among the latest rows."""
    a = archiver.Archive(one_hour)
    # tasks were in RETRY along the way, but none ended there
    assert len(a.load("tasks", filters=[("state", "==", "RETRY")])) > 0
    assert a.latest("tasks", filters=[("state", "==", "RETRY")]).empty
    failed = a.latest("tasks", columns=["uuid"], filters=[("state", "==", "FAILURE")])
    assert list(failed.columns) == ["uuid"]
    assert len(failed) == 280
    by_expr = a.latest("tasks", columns=["uuid"], filters=ds.field("state") == "FAILURE")
    pd.testing.assert_frame_equal(by_expr, failed)
    cols = a.latest("tasks", columns=["name", "state"])
    assert list(cols.columns) == ["name", "state"]
    assert len(cols) == 2110
    assert len(a.latest("tasks", limit=5)) == 5
    assert isinstance(a.latest("tasks", engine="arrow"), pa.Table)
    with pytest.raises(ArchiverError, match="no table 'nope'"):
        query.latest(a, "nope")
    with pytest.raises(ArchiverError, match="entity key"):
        query._entity_key("nope")
    with pytest.raises(ArchiverError, match="pandas or Arrow"):
        a.latest("tasks", engine="dask")


def test_latest_positions_ties_and_overlapping_files():
    """Latest positions ties and overlapping files."""
    keys = pa.chunked_array([["a", "b", "a"], ["b", "a", "c"]])
    micros = np.array([5, 1, 9, 7, 9, 0])
    # "a": 9 twice -> the later position (4); "b": 7 (3); "c": 0 (5); ordered by time
    assert rows.latest_positions(keys, micros).tolist() == [5, 3, 4]
    dict_keys = pa.chunked_array([pa.array(["x", "y"]).dictionary_encode()])
    assert rows.latest_positions(dict_keys, np.array([2, 1])).tolist() == [1, 0]
    assert rows.latest_positions(pa.chunked_array([], pa.string()), np.array([])).size == 0
    sorted_keys = pa.chunked_array([["a", "a"], ["b", "a", "b"]])
    assert rows.latest_positions(sorted_keys, np.array([1, 1, 2, 2, 3])).tolist() == [3, 4]


def test_history_is_every_version_oldest_first(one_hour):
    """History is every version oldest first."""
    a = archiver.Archive(one_hour)
    counts = a.load("tasks", columns=["uuid"])["uuid"].value_counts()
    uuid = counts.index[0]
    assert counts.iloc[0] >= 3
    history = a.history(uuid)
    assert len(history) == counts.iloc[0]
    assert history["captured_at"].is_monotonic_increasing
    assert history["captured_at"].is_unique
    assert set(history["uuid"]) == {uuid}
    latest = a.latest("tasks", filters=[("uuid", "==", uuid)])
    pd.testing.assert_frame_equal(history.tail(1).reset_index(drop=True), latest)
    # the same task in the full load, in order
    full = a.load("tasks")
    want = full[full["uuid"] == uuid].sort_values("captured_at").reset_index(drop=True)
    pd.testing.assert_frame_equal(history, want)
    assert list(a.history(uuid, columns=["captured_at", "state"]).columns) == [
        "captured_at",
        "state",
    ]
    assert a.history("no-such-task").empty
    assert list(a.history("no-such-task").columns) == TASKS.names
    worker = a.history("w1@vm", table="workers")
    assert worker["captured_at"].is_monotonic_increasing and len(worker) > 5


# -- old schemas -------------------------------------------------------------------------
def test_files_of_an_older_schema_load_with_missing_columns_null(one_hour, tmp_path):
    """Files of an older schema load with missing columns null."""
    path = copy_archive(one_hour, tmp_path)
    (f,) = (path / "tasks").rglob("*.parquet")
    current = pq.read_table(f)
    old = current.slice(0, 50).drop_columns(["runtime", "clock", "client", "root_id"])
    old = old.set_column(old.schema.get_field_index("name"), "name", old["name"].cast(pa.string()))
    old = old.set_column(
        old.schema.get_field_index("retries"), "retries", old["retries"].cast(pa.int64())
    )
    old = old.replace_schema_metadata({b"archiver.schema_version": b"0"})
    # rows of the old file get new uuids and a time before everything else
    first = current["captured_at"][0].value - 10**6
    old = old.set_column(
        old.schema.get_field_index("uuid"), "uuid", pa.array([f"old-{i}" for i in range(50)])
    )
    old = old.set_column(
        old.schema.get_field_index("captured_at"),
        "captured_at",
        pa.array([first] * 50, pa.timestamp("us", tz="UTC")),
    )
    pq.write_table(old, f.parent / "part-20261125T000000-oldwriter-000001.parquet")
    # and a snapshots file without the newest counters
    (s,) = (path / "snapshots").rglob("*.parquet")
    snaps = pq.read_table(s).drop_columns(["tasks_other", "tasks_rejected"])
    pq.write_table(snaps.slice(0, 3), s.parent / "part-20261125T000000-oldwriter-000002.parquet")

    a = archiver.Archive(path)
    tasks = a.load("tasks")
    assert len(tasks) == current.num_rows + 50
    olds = tasks[tasks["uuid"].str.startswith("old-")]
    assert len(olds) == 50
    for column in ("runtime", "clock", "client", "root_id"):
        assert olds[column].isna().all(), column
    assert olds["name"].notna().all()
    assert isinstance(tasks["name"].dtype, pd.CategoricalDtype)
    assert tasks["retries"].dtype == pd.Int32Dtype()
    assert tasks["clock"].dtype == pd.Int64Dtype()
    assert len(a.load("tasks", columns=["uuid", "runtime"], filters=[("runtime", "==", None)]))
    assert len(a.latest("tasks")) == 2110 + 50
    snapshots = a.load("snapshots")
    assert snapshots["tasks_other"].isna().sum() == 3
    infos = {i.table: i for i in query.describe(a)}
    assert infos["tasks"].schema_versions == ("0", str(SCHEMA_VERSION))


# -- dask --------------------------------------------------------------------------------
def test_dask_engine_same_rows_same_pruning(three_hours):
    """Dask engine same rows same pruning."""
    dd = pytest.importorskip("dask.dataframe")
    a = archiver.Archive(three_hours)
    lazy = a.load(
        "tasks",
        start="2026-11-25T15:58",
        end="2026-11-25T17:00",
        columns=["uuid", "name", "state", "captured_at"],
        filters=[("state", "in", ["SUCCESS", "FAILURE"])],
        engine="dask",
    )
    assert isinstance(lazy, dd.DataFrame)
    assert lazy.npartitions == 2
    eager = a.load(
        "tasks",
        start="2026-11-25T15:58",
        end="2026-11-25T17:00",
        columns=["uuid", "name", "state", "captured_at"],
        filters=[("state", "in", ["SUCCESS", "FAILURE"])],
    )
    got = lazy.compute().reset_index(drop=True)
    assert len(got) == len(eager) > 0
    as_objects = {"uuid": object, "name": object, "state": object}  # dask has its own strings
    pd.testing.assert_frame_equal(got.astype(as_objects), eager.astype(as_objects))
    assert str(got["captured_at"].dtype) == "datetime64[us, UTC]"
    empty = a.load("tasks", start="2030-01-01", engine="dask")
    assert len(empty.compute()) == 0


# -- describe ----------------------------------------------------------------------------
def test_describe_reads_only_footers(three_hours):
    """describe() counts rows, partitions and times from footers, as load() would."""
    a = archiver.Archive(three_hours)
    infos = {i.table: i for i in query.describe(a)}
    assert set(infos) == {"tasks", "workers", "snapshots"}
    for table, info in infos.items():
        frame = a.load(table, columns=["captured_at"])
        assert info.rows == len(frame)
        assert info.partitions == 3
        assert info.files == len(list((three_hours / table).rglob("*.parquet")))
        assert info.bytes == sum(p.stat().st_size for p in (three_hours / table).rglob("*.parquet"))
        assert info.first == frame["captured_at"].min()
        assert info.last == frame["captured_at"].max()
        assert info.schema_versions == (str(SCHEMA_VERSION),)


@pytest.mark.parametrize("unit", ["s", "ms", "ns"])
def test_describe_reads_statistics_in_the_files_own_unit(three_hours, tmp_path, unit):
    """Files from pandas or Spark store ``captured_at`` in ns (or ms): ``info`` and
    ``describe`` read their statistics in that unit, as ``load`` reads the values."""
    from click.testing import CliRunner

    from archiver.cli import cli

    path = tmp_path / "a"
    shutil.copytree(three_hours, path)
    for table in ("tasks", "events"):  # one of archiver's tables and a foreign one
        source = sorted((path / "tasks").rglob("*.parquet"))[-1]
        data = pq.read_table(source)
        i = data.schema.get_field_index("captured_at")
        data = data.set_column(
            i, "captured_at", data.column(i).cast(pa.timestamp(unit, tz="UTC"), safe=False)
        )
        target = path / table / source.parent.relative_to(path / "tasks") / "part-foreign.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        if table == "tasks":
            source.unlink()
        pq.write_table(data, target, version="2.6", coerce_timestamps=None)
        assert pq.read_metadata(target).schema.to_arrow_schema().field("captured_at").type.unit in (
            unit if unit != "s" else "ms"
        )
    a = archiver.Archive(path)
    infos = {i.table: i for i in query.describe(a)}
    for table in ("tasks", "events"):
        frame = a.load(table, columns=["captured_at"])
        assert infos[table].rows == len(frame) > 0
        assert infos[table].first == frame["captured_at"].min()
        assert infos[table].last == frame["captured_at"].max()
    result = CliRunner().invoke(cli, ["info", "--archive", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{infos['events'].last:%Y-%m-%d %H:%M}" in result.output


def test_time_expression_and_prune_helpers():
    """Time expression and prune helpers."""
    parts = [
        archiver.archive.Partition("tasks", "2026-11-25", h, f"/x/hour={h}") for h in range(24)
    ]
    got = query.prune(parts, ts("2026-11-25 10:30"), ts("2026-11-25 12:00"))
    assert [p.hour for p in got] == [10, 11]
    assert [p.hour for p in query.prune(parts, None, ts("2026-11-25 01:00:00.000001"))] == [0, 1]
    assert len(query.prune(parts, None, None)) == 24
    assert query.time_expression(None, None) is None
    schema = with_metadata(TASKS, "tasks")
    assert query.filters_to_expression(None, schema) is None
    assert query.expression_columns(ds.field("state") == "x", schema) == ["state"]
    assert sorted(
        query.expression_columns((ds.field("state") == "x") | (ds.field("retries") > 1), schema)
    ) == ["retries", "state"]


def test_naive_timedelta_window(one_hour):
    """start/end as datetimes a few seconds apart select exactly the snapshots between."""
    a = archiver.Archive(one_hour)
    snaps = a.load("snapshots", columns=["captured_at"])["captured_at"]
    start = snaps.iloc[3].to_pydatetime()
    end = start + timedelta(seconds=5)
    got = a.load("snapshots", start=start, end=end)
    assert len(got) == 5


def test_history_and_latest_read_only_the_row_groups_they_need(one_hour, tmp_path):
    """History and latest read only the row groups they need."""
    path = copy_archive(one_hour, tmp_path)
    (f,) = (path / "tasks").rglob("*.parquet")
    table = pq.read_table(f)
    reference = archiver.Archive(one_hour)
    pq.write_table(table, f, row_group_size=500, compression="zstd")
    meta = pq.read_metadata(f)
    assert meta.num_row_groups > 5
    a = archiver.Archive(path)
    pd.testing.assert_frame_equal(a.latest("tasks"), reference.latest("tasks"))
    uuid = table["uuid"][0].as_py()
    pd.testing.assert_frame_equal(a.history(uuid), reference.history(uuid))
    mid = table["uuid"][table.num_rows // 2].as_py()
    pd.testing.assert_frame_equal(a.history(mid), reference.history(mid))
    # damage every column but uuid and captured_at after the first row group: history of a
    # task that lives in the first row group still reads, a full load does not
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    first_group = set(table.slice(0, 500)["uuid"].to_pylist())
    later = set(table.slice(500)["uuid"].to_pylist())
    uuid = next(u for u in table["uuid"].to_pylist() if u in first_group and u not in later)
    data = bytearray(f.read_bytes())
    for g in range(1, meta.num_row_groups):
        rg = meta.row_group(g)
        for i, name in enumerate(names):
            if name in ("uuid", "captured_at"):
                continue
            col = rg.column(i)
            lo = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
            data[lo : lo + col.total_compressed_size] = b"\xff" * col.total_compressed_size
    f.write_bytes(bytes(data))
    pd.testing.assert_frame_equal(a.history(uuid), reference.history(uuid))
    with pytest.raises(ArchiverError, match=r"damaged .*part-"):
        a.load("tasks", on_bad_file="raise")


def test_latest_with_files_that_overlap_in_time(one_hour, tmp_path):
    """Two writers in one partition: their files interleave in time."""
    path = copy_archive(one_hour, tmp_path)
    (f,) = (path / "tasks").rglob("*.parquet")
    table = pq.read_table(f)
    f.unlink()
    even = np.arange(0, table.num_rows, 2)
    pq.write_table(table.take(even), f.parent / "part-20261125T155742-aaaaaaaaaaaa-000001.parquet")
    pq.write_table(
        table.take(even + 1 if table.num_rows % 2 == 0 else even[:-1] + 1),
        f.parent / "part-20261125T155742-bbbbbbbbbbbb-000001.parquet",
    )
    a = archiver.Archive(path)
    reference = archiver.Archive(one_hour)
    got = a.latest("tasks")
    assert got["captured_at"].is_monotonic_increasing
    want = reference.latest("tasks")
    pd.testing.assert_frame_equal(
        got.set_index("uuid").sort_index(), want.set_index("uuid").sort_index()
    )
    uuid = reference.load("tasks", columns=["uuid"])["uuid"].value_counts().index[0]
    pd.testing.assert_frame_equal(a.history(uuid), reference.history(uuid))


@pytest.mark.parametrize("value", ["1000000d", 1e12, "99999 weeks"])
def test_times_out_of_range_are_a_clear_error(value):
    """A time pandas cannot hold is an ArchiverError naming the range, not an OverflowError."""
    with pytest.raises(ArchiverError, match="outside the years 1677-2262"):
        timeparse.parse_time(value)


def test_durations_over_a_century_are_refused():
    """A retention of a million days is refused with a message, not a pandas traceback."""
    with pytest.raises(ArchiverError, match="must be under 100 years"):
        timeparse.parse_duration("1000000d", what="older_than")


@pytest.mark.parametrize(
    ("table", "condition", "message"),
    [
        ("tasks", "runtime>nan", r"cannot compare column runtime \(double\) with 'nan'"),
        ("tasks", "runtime=NaN", r"cannot compare column runtime \(double\) with 'NaN'"),
        (
            "workers",
            "loadavg=1",
            r"cannot compare column loadavg \(list<item: double>\) with '1': a list column",
        ),
    ],
)
def test_a_value_no_row_can_match_is_refused(one_hour, table, condition, message):
    """NaN (equal to nothing) and a list column are refused by name, not answered empty."""
    with pytest.raises(ArchiverError, match=message):
        archiver.Archive(one_hour).load(table, filters=[condition])
