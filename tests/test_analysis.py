"""archiver.analysis: known answers on small frames, and consistency on the demo archive."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import archiver
from archiver import analysis, demo

from .helpers import record_copies

T0 = pd.Timestamp("2026-01-01 00:00", tz="UTC")


def at(seconds: float | None) -> pd.Timestamp:
    return pd.NaT if seconds is None else T0 + pd.Timedelta(seconds=seconds)


def tasks_frame(rows: list[dict]) -> pd.DataFrame:
    """A tasks frame shaped like ``latest("tasks")`` (times given in seconds after T0)."""
    times = (
        "captured_at", "sent", "received", "started", "succeeded", "failed", "retried",
        "revoked", "rejected",
    )  # fmt: skip
    out = []
    for i, row in enumerate(rows):
        row = dict(row)
        row.setdefault("uuid", f"t{i}")
        for column in times:
            row[column] = at(row.get(column))
        out.append(row)
    frame = pd.DataFrame(out)
    for column in times:
        frame[column] = pd.to_datetime(frame[column], utc=True).astype("datetime64[us, UTC]")
    for column in ("name", "state", "worker"):
        if column in frame:
            frame[column] = frame[column].astype("category")
    if "retries" in frame:
        frame["retries"] = frame["retries"].astype("Int32")
    if "runtime" in frame:
        frame["runtime"] = frame["runtime"].astype("float64")
    return frame


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, sample_events):
    """The sample events replayed through a State and the camera, a snapshot per second."""
    path = tmp_path_factory.mktemp("analysis") / "archive"
    record_copies(path, [sample_events])
    return archiver.Archive(path)


@pytest.fixture(scope="module")
def demo_archive(tmp_path_factory):
    """The archive ``make demo`` records (and the notebook explores)."""
    return archiver.Archive(demo.demo_archive(tmp_path_factory.mktemp("demo") / "archive"))


# -- helpers -------------------------------------------------------------------------------
def test_auto_freq():
    """The smallest round interval giving at most 40 bins, at least `minimum` seconds."""
    times = pd.Series([T0, T0 + pd.Timedelta("26s")])
    assert analysis.auto_freq(times) == "1s"
    assert analysis.auto_freq(pd.Series([T0, T0 + pd.Timedelta("2h")])) == "5min"
    assert analysis.auto_freq(pd.Series([T0, T0 + pd.Timedelta("2D")])) == "2h"
    assert analysis.auto_freq(times, minimum=4) == "5s"
    assert analysis.auto_freq(pd.Series([], dtype="datetime64[us, UTC]")) == "1s"


def test_one_row_per_task_keeps_the_last_version():
    """A load() history becomes one row per task: the latest captured_at wins."""
    history = tasks_frame(
        [
            {"uuid": "a", "captured_at": 1, "state": "RECEIVED"},
            {"uuid": "b", "captured_at": 1, "state": "RECEIVED"},
            {"uuid": "a", "captured_at": 3, "state": "SUCCESS"},
            {"uuid": "a", "captured_at": 2, "state": "STARTED"},
        ]
    )
    last = analysis.one_row_per_task(history)
    assert dict(zip(last["uuid"], last["state"])) == {"a": "SUCCESS", "b": "RECEIVED"}


# -- tasks ---------------------------------------------------------------------------------
def small_tasks() -> pd.DataFrame:
    return tasks_frame(
        [
            # add: waits 1 s and 3 s, runs 2 s and 4 s; finishes at 3 s and 67 s
            {"name": "add", "state": "SUCCESS", "worker": "w1", "sent": -2, "received": 0,
             "started": 1,
             "succeeded": 3, "runtime": 2.0, "retries": 0},
            {"name": "add", "state": "SUCCESS", "worker": "w2", "sent": 54, "received": 60,
             "started": 63,
             "succeeded": 67, "runtime": 4.0, "retries": 0},
            # fail: fails after a retry
            {"name": "fail", "state": "FAILURE", "worker": "w1", "received": 10, "started": 12,
             "failed": 20, "retried": 11, "retries": 1, "exception": "ValueError('x')"},
            {"name": "fail", "state": "FAILURE", "worker": "w1", "received": 30, "started": 30,
             "failed": 31, "retries": 0, "exception": "KeyError('k')"},
            {"name": "fail", "state": "SUCCESS", "worker": "w2", "received": 40, "started": 41,
             "succeeded": 45, "retries": 2},
            # still queued (4 s in the broker), and revoked
            {"name": "add", "state": "RECEIVED", "worker": "w2", "sent": 66, "received": 70},
            {"name": "slow", "state": "REVOKED", "worker": "w2", "received": 5, "revoked": 6},
        ]
    )  # fmt: skip


def test_throughput_counts_finished_tasks_per_interval():
    """Finished tasks per interval, per name, per worker or in total, no gaps."""
    got = analysis.throughput(small_tasks(), "1min")
    assert got.attrs["freq"] == "1min"
    assert list(got.index) == [T0, T0 + pd.Timedelta("1min")]
    assert got.to_dict("list") == {"fail": [3, 0], "add": [1, 1]}
    assert got.index.name == "interval"
    total = analysis.throughput(small_tasks(), "30s", by=None)
    assert total[analysis.ALL].tolist() == [2, 2, 1]  # 0-30 s, 30-60 s, 60-90 s
    only_failed = analysis.throughput(small_tasks(), "1h", states=["FAILURE"])
    assert only_failed.to_dict("list") == {"fail": [2]}
    by_worker = analysis.throughput(small_tasks(), "1h", by="worker")
    assert by_worker.to_dict("list") == {"w1": [3], "w2": [2]}


def test_latency_percentiles():
    """Broker wait, queue wait and runtime percentiles per name, in seconds."""
    got = analysis.latency(small_tasks(), percentiles=(0.5, 1.0))
    add = got.loc["add"]
    assert add["count"] == 2  # the queued one has neither wait nor runtime
    assert add["broker_p50"] == pytest.approx(4.0)  # sent -> received: 2, 6 and 4 s
    assert add["broker_p100"] == pytest.approx(6.0)
    assert add["wait_p50"] == pytest.approx(2.0)
    assert add["wait_p100"] == pytest.approx(3.0)
    assert add["runtime_p50"] == pytest.approx(3.0)
    assert add["runtime_p100"] == pytest.approx(4.0)
    fail = got.loc["fail"]  # no reported runtime: finished - started
    assert fail["runtime_p100"] == pytest.approx(8.0)
    assert fail["wait_p50"] == pytest.approx(1.0)
    assert np.isnan(fail["broker_p50"])  # sent unknown
    assert list(got.columns) == [
        "count", "broker_p50", "broker_p100", "wait_p50", "wait_p100", "runtime_p50",
        "runtime_p100",
    ]  # fmt: skip
    overall = analysis.latency(small_tasks(), by=None)
    assert overall.index.tolist() == [analysis.ALL]
    assert overall.loc[analysis.ALL, "count"] == 5
    waits = analysis.queue_wait(small_tasks())
    assert waits.iloc[:2].tolist() == [1.0, 3.0]
    assert np.isnan(waits.iloc[5])
    assert analysis.broker_wait(small_tasks()).iloc[[0, 1, 5]].tolist() == [2.0, 6.0, 4.0]
    with pytest.raises(ValueError, match=r"^latency\(\): percentiles must be fractions"):
        analysis.latency(small_tasks(), percentiles=(50,))
    with pytest.raises(ValueError, match=r"got 'p90'$"):
        analysis.latency(small_tasks(), percentiles=("p90",))


def test_failure_rates():
    """Counts and rates per name; a RETRY seen anywhere in the history counts."""
    got = analysis.failure_rates(small_tasks())
    fail = got.loc["fail"]
    assert (fail["tasks"], fail["succeeded"], fail["failed"], fail["retried"]) == (3, 1, 2, 2)
    assert fail["failure_rate"] == pytest.approx(2 / 3)
    assert fail["retry_rate"] == pytest.approx(2 / 3)
    add = got.loc["add"]
    assert (add["tasks"], add["failed"], add["failure_rate"]) == (3, 0, 0.0)
    slow = got.loc["slow"]
    assert slow["revoked"] == 1 and np.isnan(slow["failure_rate"])
    assert got["rejected"].sum() == 0
    assert got.index[0] == "fail"  # most failures first
    total = analysis.failure_rates(small_tasks(), by=None).loc[analysis.ALL]
    assert total["tasks"] == 7 and total["failed"] == 2
    # a RETRY seen in the history counts, even when the last version lost the trace
    history = tasks_frame(
        [
            {"uuid": "r", "name": "x", "state": "RETRY", "captured_at": 1},
            {"uuid": "r", "name": "x", "state": "SUCCESS", "captured_at": 2},
            {"uuid": "s", "name": "x", "state": "SUCCESS", "captured_at": 2},
        ]
    )
    assert analysis.failure_rates(history).loc["x", "retried"] == 1


def test_top_exceptions_and_slowest():
    """Exceptions by type with an example; the slowest tasks by each measure."""
    top = analysis.top_exceptions(small_tasks())
    assert top[["name", "exception", "count"]].values.tolist() == [
        ["fail", "ValueError", 1],
        ["fail", "KeyError", 1],
    ]
    assert top["example"].iloc[0] == "ValueError('x')"
    assert analysis.exception_type("reject requeue=False: rejected #15") == "reject requeue=False"
    assert analysis.top_exceptions(small_tasks().iloc[:2]).empty

    slow = analysis.slowest(small_tasks(), 2)
    assert slow["runtime"].tolist() == [8.0, 4.0]
    assert slow["name"].tolist() == ["fail", "add"]
    by_wait = analysis.slowest(small_tasks(), 1, by="wait")
    assert by_wait["wait"].tolist() == [3.0]
    by_total = analysis.slowest(small_tasks(), 1, by="total")
    assert by_total["total"].tolist() == [10.0]
    by_broker = analysis.slowest(small_tasks(), 1, by="broker")
    assert by_broker["broker"].tolist() == [6.0]
    with pytest.raises(ValueError, match=r"^slowest\(\): by must be"):
        analysis.slowest(small_tasks(), by="name")


def test_worker_utilisation_integrates_busy_time():
    """Busy slots per interval, averaged over the part of it the data covers."""
    tasks = tasks_frame(
        [
            {"worker": "w1", "state": "SUCCESS", "started": 0, "succeeded": 30},
            {"worker": "w1", "state": "SUCCESS", "started": 15, "succeeded": 45},
            {"worker": "w2", "state": "STARTED", "started": 50, "captured_at": 70},
        ]
    )
    got = analysis.worker_utilisation(tasks, "30s")
    assert list(got.index) == [T0, T0 + pd.Timedelta("30s"), T0 + pd.Timedelta("60s")]
    # w1: [0, 30) busy 30 + 15 s -> 1.5 slots; [30, 60) 15 s -> 0.5
    assert got["w1"].tolist() == pytest.approx([1.5, 0.5, 0.0])
    # w2 still running at the snapshot (70 s): 10 s in [30, 60); in [60, 90) the data
    # ends at 70 s, so its 10 busy seconds are averaged over those 10 s, not 30
    assert got["w2"].tolist() == pytest.approx([0.0, 1 / 3, 1.0])
    share = analysis.worker_utilisation(tasks, "30s", concurrency={"w1": 2, "w2": 1})
    assert share["w1"].tolist() == pytest.approx([0.75, 0.25, 0.0])
    assert share["w2"].tolist() == pytest.approx([0.0, 1 / 3, 1.0])
    until = analysis.worker_utilisation(tasks, "30s", until=T0 + pd.Timedelta("55s"))
    assert until["w1"].tolist() == pytest.approx([1.5, 15 / 25])  # [30, 55) covered
    assert until["w2"].tolist() == pytest.approx([0.0, 5 / 25])
    # one 1-hour interval: the 70 s the data covers, not 3,600 s
    hour = analysis.worker_utilisation(tasks, "1h")
    assert hour.iloc[0].to_dict() == pytest.approx({"w1": 60 / 70, "w2": 20 / 70})


def test_worker_activity():
    """Heartbeat metrics per interval and worker: processed, active, alive, loadavg."""
    workers = pd.DataFrame(
        {
            "captured_at": [at(s) for s in (0, 0, 10, 10, 70, 70)],
            "hostname": pd.Categorical(["a", "b"] * 3),
            "processed": pd.array([0, 5, 4, 5, 10, 9], dtype="Int64"),
            "active": pd.array([1, 0, 3, 1, 2, 0], dtype="Int64"),
            "alive": pd.array([True, True, True, False, True, False], dtype="boolean"),
            "loadavg": [[1.0, 0, 0], [2.0, 0, 0]] * 3,
            "freq": [2.0] * 6,
        }
    )
    processed = analysis.worker_activity(workers, "1min")
    assert processed.to_dict("list") == {"a": [4.0, 6.0], "b": [0.0, 4.0]}
    assert processed.attrs["freq"] == "1min"
    assert analysis.worker_activity(workers, "1min", metric="active").to_dict("list") == {
        "a": [3.0, 2.0],
        "b": [1.0, 0.0],
    }
    alive = analysis.worker_activity(workers, "1min", metric="alive")
    assert alive.to_dict("list") == {"a": [1.0, 1.0], "b": [0.0, 0.0]}
    load = analysis.worker_activity(workers, "1min", metric="loadavg")
    assert load.to_dict("list") == {"a": [1.0, 1.0], "b": [2.0, 2.0]}
    assert analysis.worker_activity(workers).attrs["freq"] == "5s"  # >= 2 heartbeats
    with pytest.raises(ValueError, match=r"^worker_activity\(\): metric must be"):
        analysis.worker_activity(workers, metric="cpu")


def test_missing_columns_are_named():
    """A frame without a needed column: a one-line ValueError naming function and columns."""
    with pytest.raises(ValueError, match=r"^throughput\(\): the frame lacks the column\(s\) state"):
        analysis.throughput(pd.DataFrame({"uuid": ["a"]}))
    with pytest.raises(TypeError, match=r"^latency\(\) takes a pandas DataFrame"):
        analysis.latency([1, 2])  # type: ignore[arg-type]


# -- on the recording ----------------------------------------------------------------------
def test_on_the_recorded_cluster(recorded):
    """On the recorded sample: latest() and load() agree, and the counts are the known ones."""
    latest = recorded.latest("tasks")
    history = recorded.load("tasks")
    # the same answers from latest() and from the whole history
    pd.testing.assert_frame_equal(analysis.throughput(latest), analysis.throughput(history))
    pd.testing.assert_frame_equal(analysis.latency(latest), analysis.latency(history))
    rates = analysis.failure_rates(latest)
    pd.testing.assert_frame_equal(rates, analysis.failure_rates(history))
    finished = latest["state"].isin(["SUCCESS", "FAILURE"]).sum()
    assert analysis.throughput(latest).to_numpy().sum() == finished
    assert rates["tasks"].sum() == len(latest) == 2110
    # 280 task-failed events, 60 of them from tasks that raised Reject (task-rejected)
    assert rates["failed"].sum() == 220 and rates["rejected"].sum() == 60
    assert rates.loc["harness.rejecting", ["failed", "rejected"]].tolist() == [0, 60]
    assert rates.loc["harness.fail", "failure_rate"] == 1.0
    assert rates.loc["harness.flaky", "retry_rate"] > 0.5
    lat = analysis.latency(latest)
    assert lat.loc["harness.slow", "runtime_p50"] > 10 * lat.loc["harness.add", "runtime_p50"]
    assert (lat["wait_p50"] >= 0).all()
    slowest = analysis.slowest(latest, 5)
    assert (slowest["name"] == "harness.slow").all()
    assert slowest["runtime"].is_monotonic_decreasing
    top = analysis.top_exceptions(latest)
    assert top["count"].sum() == 220  # the same failures as failure_rates()

    busy = analysis.worker_utilisation(latest)
    assert set(busy.columns) == {"w1@vm", "w2@vm"}
    assert (busy.to_numpy() >= 0).all() and busy.to_numpy().max() > 0.5

    workers = recorded.load("workers")
    processed = analysis.worker_activity(workers, metric="processed")
    final = recorded.latest("workers").set_index("hostname")["processed"]
    assert processed.sum().to_dict() == {h: float(v) for h, v in final.items()}

    timeline = analysis.cluster_timeline(recorded.load("snapshots"))
    assert timeline.index.is_monotonic_increasing
    assert {"success", "failure", "in_flight", "alive_workers", "events_per_s"} <= set(timeline)
    assert timeline["success"].iloc[-1] == 1680
    counts = ["success", "failure", "in_flight", "alive_workers"]
    assert (timeline[counts].dtypes == "int64").all()
    assert timeline["alive_workers"].max() == 2
    assert timeline["events_per_s"].iloc[1:].gt(0).any()


# -- a task dated in the year 9999 ------------------------------------------------------------
def far_future_frame() -> pd.DataFrame:
    """Three finished tasks, one of them (a bad clock) in the year 9999."""
    times = pd.Series(
        [T0, T0 + pd.Timedelta("5min"), pd.Timestamp("9999-12-31", tz="UTC")],
        dtype="datetime64[us, UTC]",
    )
    return pd.DataFrame(
        {
            "uuid": ["a", "b", "c"],
            "state": pd.Categorical(["SUCCESS", "FAILURE", "SUCCESS"]),
            "name": pd.Categorical(["x", "y", "x"]),
            "worker": pd.Categorical(["w1", "w1", "w2"]),
            "started": times,
            "succeeded": times.where([True, False, True]),
            "failed": times.where([False, True, False]),
        }
    )


def test_throughput_over_a_huge_span_lists_only_intervals_with_tasks():
    """1-minute throughput from 2026 to 9999 would be 4 billion rows: the intervals holding
    tasks are listed instead, with a warning naming the span; every task is counted."""
    with pytest.warns(UserWarning, match=r"throughput\(\): the times span .* 9999-12-31"):
        table = analysis.throughput(far_future_frame(), "1min")
    assert list(table.index.year) == [2026, 2026, 9999]
    assert table.to_numpy().sum() == 3
    assert table.attrs["freq"] == "1min"


def test_worker_utilisation_over_a_huge_span_is_a_one_line_error():
    """Utilisation needs every interval: beyond MAX_INTERVALS it says so in one line."""
    with pytest.raises(
        ValueError, match=r"^worker_utilisation\(\): the tasks run from .*larger freq"
    ):
        analysis.worker_utilisation(far_future_frame(), "1min")
    wide = analysis.worker_utilisation(far_future_frame(), "365D")  # coarse enough: fine
    assert len(wide) <= analysis.MAX_INTERVALS


# -- intervals -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "alias"),
    [
        ("1m", "1min"),
        ("1min", "1min"),
        ("90s", "90s"),
        ("1.5m", "90s"),
        ("1h", "1h"),
        ("1H", "1h"),
        ("1D", "1D"),
        ("1d12h", "36h"),
        ("1w", "7D"),
        ("250ms", "250ms"),
        (timedelta(minutes=5), "5min"),
    ],
)
def test_interval_freq_reads_durations_as_archiver_does(given, alias):
    """An interval is a duration as archiver spells them: "1m" is one minute, not a month."""
    assert analysis.interval_freq(given) == alias


@pytest.mark.parametrize("bad", ["1M", "ME", "2MS", "1Y", "1Q", "1B", "60", "soon", "0s", "-1m"])
def test_interval_freq_refuses_calendar_and_nonsense(bad):
    """Months, years, business days, bare numbers and zero are a one-line ValueError."""
    with pytest.raises(ValueError, match=r"^throughput\(\): invalid interval") as info:
        analysis.throughput(small_tasks(), bad)
    assert "\n" not in str(info.value)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 10_000), unit=st.sampled_from(["s", "m", "min", "h", "d"]))
def test_interval_freq_is_the_duration(n, unit):
    """Whatever the unit word, the alias is exactly the duration timeparse reads."""
    seconds = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}[unit]
    assert pd.Timedelta(analysis.interval_freq(f"{n}{unit}")) == pd.Timedelta(seconds=n * seconds)


def test_throughput_per_minute_is_one_minute(demo_archive):
    """throughput(tasks, "1m") on the demo archive: minute bins, the same as "1min"."""
    tasks = demo_archive.latest("tasks")
    got = analysis.throughput(tasks, "1m")
    pd.testing.assert_frame_equal(got, analysis.throughput(tasks, "1min"))
    assert got.attrs["freq"] == "1min"
    assert (got.index[1:] - got.index[:-1] == pd.Timedelta("1min")).all()
    assert got.to_numpy().sum() == tasks["state"].isin(["SUCCESS", "FAILURE"]).sum()


# -- empty and wrong frames ------------------------------------------------------------------
def _each_function(archive: archiver.Archive) -> list[tuple[str, pd.DataFrame, object]]:
    tasks, workers = archive.latest("tasks"), archive.load("workers")
    snapshots = archive.load("snapshots")
    return [
        ("throughput", tasks, analysis.throughput),
        ("throughput_by_none", tasks, lambda t: analysis.throughput(t, "1m", by=None)),
        ("latency", tasks, analysis.latency),
        ("latency_by_none", tasks, lambda t: analysis.latency(t, by=None)),
        ("failure_rates", tasks, analysis.failure_rates),
        ("top_exceptions", tasks, analysis.top_exceptions),
        ("top_exceptions_by_none", tasks, lambda t: analysis.top_exceptions(t, by=None)),
        ("slowest", tasks, analysis.slowest),
        ("worker_utilisation", tasks, analysis.worker_utilisation),
        ("worker_activity", workers, analysis.worker_activity),
        ("worker_activity_active", workers, lambda w: analysis.worker_activity(w, metric="active")),
        ("worker_activity_alive", workers, lambda w: analysis.worker_activity(w, metric="alive")),
        ("worker_activity_load", workers, lambda w: analysis.worker_activity(w, metric="loadavg")),
        ("cluster_timeline", snapshots, analysis.cluster_timeline),
    ]


# Per interval, one column per task name or worker: none of them in an empty frame.
COLUMNS_FROM_DATA = {"throughput", "worker_utilisation", "worker_activity"}


def test_every_function_on_an_empty_frame_keeps_the_shape(demo_archive):
    """Each function on the demo archive and on its empty slice: same columns, index and dtypes."""
    for label, frame, fn in _each_function(demo_archive):
        full, empty = fn(frame), fn(frame.iloc[:0])
        assert len(full) > 0 and len(empty) == 0, label
        assert empty.index.dtype == full.index.dtype, label
        assert empty.index.name == full.index.name, label
        assert empty.columns.name == full.columns.name, label
        if label in COLUMNS_FROM_DATA or label.startswith("worker_activity"):
            assert list(empty.columns) == [], label
            assert (full.dtypes == full.dtypes.iloc[0]).all(), label  # one dtype throughout
        else:
            assert list(empty.columns) == list(full.columns), label
            pd.testing.assert_series_equal(empty.dtypes, full.dtypes, obj=label)


def test_every_function_on_the_wrong_frame_names_what_is_missing(demo_archive):
    """A workers frame where tasks are expected (and the reverse): one line naming function
    and columns, never an empty or nonsense result."""
    tasks, workers = demo_archive.latest("tasks"), demo_archive.load("workers")
    cases = [
        (analysis.throughput, workers, "throughput", "state"),
        (analysis.latency, workers, "latency", "sent, received, started"),
        (analysis.failure_rates, workers, "failure_rates", "state"),
        (analysis.top_exceptions, workers, "top_exceptions", "state, exception"),
        (analysis.slowest, workers, "slowest", "uuid, started"),
        (analysis.worker_utilisation, workers, "worker_utilisation", "worker, started"),
        (analysis.queue_wait, workers, "queue_wait", "received, started"),
        (analysis.broker_wait, workers, "broker_wait", "sent, received"),
        (analysis.worker_activity, tasks, "worker_activity", "hostname, processed"),
        (analysis.cluster_timeline, tasks, "cluster_timeline", "tasks_pending"),
        (lambda t: analysis.throughput(t, by="queue"), tasks, "throughput", "queue"),
    ]
    for fn, frame, name, missing in cases:
        with pytest.raises(ValueError) as info:
            fn(frame)
        text = str(info.value)
        assert text.startswith(f"{name}(): the frame lacks the column"), text
        assert missing in text and "\n" not in text, text


def test_cluster_timeline_counts_are_integers(demo_archive):
    """Tasks per state, in flight and alive workers are int64; only the rate is a float."""
    timeline = analysis.cluster_timeline(demo_archive.load("snapshots"))
    rate = timeline.pop("events_per_s")
    assert rate.dtype == "float64"
    assert (timeline.dtypes == "int64").all()
    assert (timeline["in_flight"] == timeline[["received", "started", "retry"]].sum(axis=1)).all()


# -- on the demo archive ---------------------------------------------------------------------
def test_broker_wait_on_the_demo_archive(demo_archive):
    """Broker wait (sent -> received) is reported beside queue wait, and dominates it here."""
    tasks = demo_archive.latest("tasks")
    lat = analysis.latency(tasks, (0.5,), by=None).loc[analysis.ALL]
    waits = (tasks["received"] - tasks["sent"]).dt.total_seconds()
    assert lat["broker_p50"] == pytest.approx(waits.median())
    assert lat["broker_p50"] > 5 * lat["wait_p50"]
    slow = analysis.slowest(tasks, 3, by="broker")
    assert slow["broker"].tolist() == pytest.approx(waits.nlargest(3).tolist())


def test_worker_utilisation_is_the_same_busy_time_at_any_interval(demo_archive):
    """Averaged over the covered part of each interval, the busy time is the same whatever
    the interval: one hour-long interval gives the covered-time-weighted mean of 1 s ones."""
    tasks = demo_archive.latest("tasks")
    fine = analysis.worker_utilisation(tasks, "1s")
    coarse = analysis.worker_utilisation(tasks, "1h")
    assert len(coarse) == 1
    starts = fine.index
    start = min(tasks[c].min() for c in ("sent", "received", "started"))
    end = tasks["captured_at"].max()
    covered = (
        (np.minimum(starts + pd.Timedelta("1s"), end) - np.maximum(starts, start))
        .total_seconds()
        .to_numpy()
    )
    weighted = (fine.mul(covered, axis=0).sum() / covered.sum()).to_dict()
    assert coarse.iloc[0].to_dict() == pytest.approx(weighted)
    span = (end - start).total_seconds()
    assert span < 60  # the sample covers under a minute of the hour
    assert coarse.to_numpy().max() > 0.5  # not diluted over 3,600 s
