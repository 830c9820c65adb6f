"""archiver.analysis: known answers on small frames, and consistency on the recorded events."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import archiver
from archiver import analysis

from .helpers import record_copies

T0 = pd.Timestamp("2026-01-01 00:00", tz="UTC")


def at(seconds: float | None) -> pd.Timestamp:
    return pd.NaT if seconds is None else T0 + pd.Timedelta(seconds=seconds)


def tasks_frame(rows: list[dict]) -> pd.DataFrame:
    """A tasks frame shaped like ``latest("tasks")`` (times given in seconds after T0)."""
    times = ("captured_at", "received", "started", "succeeded", "failed", "retried", "revoked")
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
    path = tmp_path_factory.mktemp("analysis") / "archive"
    record_copies(path, [sample_events])
    return archiver.Archive(path)


# -- helpers -------------------------------------------------------------------------------
def test_auto_freq():
    """auto_freq picks a bucket that gives a readable number of points for the span."""
    times = pd.Series([T0, T0 + pd.Timedelta("26s")])
    assert analysis.auto_freq(times) == "1s"
    assert analysis.auto_freq(pd.Series([T0, T0 + pd.Timedelta("2h")])) == "5min"
    assert analysis.auto_freq(pd.Series([T0, T0 + pd.Timedelta("2D")])) == "2h"
    assert analysis.auto_freq(times, minimum=4) == "5s"
    assert analysis.auto_freq(pd.Series([], dtype="datetime64[us, UTC]")) == "1s"


def test_one_row_per_task_keeps_the_last_version():
    """One row per task keeps the last version."""
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
            {"name": "add", "state": "SUCCESS", "worker": "w1", "received": 0, "started": 1,
             "succeeded": 3, "runtime": 2.0, "retries": 0},
            {"name": "add", "state": "SUCCESS", "worker": "w2", "received": 60, "started": 63,
             "succeeded": 67, "runtime": 4.0, "retries": 0},
            # fail: fails after a retry
            {"name": "fail", "state": "FAILURE", "worker": "w1", "received": 10, "started": 12,
             "failed": 20, "retried": 11, "retries": 1, "exception": "ValueError('x')"},
            {"name": "fail", "state": "FAILURE", "worker": "w1", "received": 30, "started": 30,
             "failed": 31, "retries": 0, "exception": "KeyError('k')"},
            {"name": "fail", "state": "SUCCESS", "worker": "w2", "received": 40, "started": 41,
             "succeeded": 45, "retries": 2},
            # still queued, and revoked
            {"name": "add", "state": "RECEIVED", "worker": "w2", "received": 70},
            {"name": "slow", "state": "REVOKED", "worker": "w2", "received": 5, "revoked": 6},
        ]
    )  # fmt: skip


def test_throughput_counts_finished_tasks_per_interval():
    """Throughput counts finished tasks per interval."""
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
    """Wait and runtime percentiles per task name, from started minus received and the runtime."""
    got = analysis.latency(small_tasks(), percentiles=(0.5, 1.0))
    add = got.loc["add"]
    assert add["count"] == 2  # the queued one has neither wait nor runtime
    assert add["wait_p50"] == pytest.approx(2.0)
    assert add["wait_p100"] == pytest.approx(3.0)
    assert add["runtime_p50"] == pytest.approx(3.0)
    assert add["runtime_p100"] == pytest.approx(4.0)
    fail = got.loc["fail"]  # no reported runtime: finished - started
    assert fail["runtime_p100"] == pytest.approx(8.0)
    assert fail["wait_p50"] == pytest.approx(1.0)
    assert list(got.columns) == [
        "count", "wait_p50", "wait_p100", "runtime_p50", "runtime_p100"
    ]  # fmt: skip
    overall = analysis.latency(small_tasks(), by=None)
    assert overall.index.tolist() == [analysis.ALL]
    assert overall.loc[analysis.ALL, "count"] == 5
    waits = analysis.queue_wait(small_tasks())
    assert waits.iloc[:2].tolist() == [1.0, 3.0]
    assert np.isnan(waits.iloc[5])


def test_failure_rates():
    """Per task name: tasks, successes, failures, retries and their rates."""
    got = analysis.failure_rates(small_tasks())
    fail = got.loc["fail"]
    assert (fail["tasks"], fail["succeeded"], fail["failed"], fail["retried"]) == (3, 1, 2, 2)
    assert fail["failure_rate"] == pytest.approx(2 / 3)
    assert fail["retry_rate"] == pytest.approx(2 / 3)
    add = got.loc["add"]
    assert (add["tasks"], add["failed"], add["failure_rate"]) == (3, 0, 0.0)
    slow = got.loc["slow"]
    assert slow["revoked"] == 1 and np.isnan(slow["failure_rate"])
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
    """The most common exception types per task with an example, and the slowest tasks."""
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
    with pytest.raises(ValueError, match="by must be"):
        analysis.slowest(small_tasks(), by="name")


def test_worker_utilisation_integrates_busy_time():
    """Worker utilisation integrates busy time."""
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
    # w2 still running at the snapshot (70 s): 10 s in [30, 60), 10 s in [60, 90)
    assert got["w2"].tolist() == pytest.approx([0.0, 1 / 3, 1 / 3])
    share = analysis.worker_utilisation(tasks, "30s", concurrency={"w1": 2, "w2": 1})
    assert share["w1"].tolist() == pytest.approx([0.75, 0.25, 0.0])
    assert share["w2"].tolist() == pytest.approx([0.0, 1 / 3, 1 / 3])
    until = analysis.worker_utilisation(tasks, "30s", until=T0 + pd.Timedelta("55s"))
    assert until["w2"].tolist() == pytest.approx([0.0, 1 / 6])


def test_worker_activity():
    """Per worker and bucket: tasks processed, active tasks, alive and load."""
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
    with pytest.raises(ValueError, match="metric"):
        analysis.worker_activity(workers, metric="cpu")


def test_missing_columns_are_named():
    """A frame without a needed column raises KeyError naming the column."""
    with pytest.raises(KeyError, match=r"needs the column.*state"):
        analysis.throughput(pd.DataFrame({"uuid": ["a"]}))


# -- on the recording ----------------------------------------------------------------------
def test_on_the_recorded_cluster(recorded):
    """On the recorded cluster, latest() and the whole history give the same answers."""
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
    assert rates["failed"].sum() == 280
    assert rates.loc["harness.fail", "failure_rate"] == 1.0
    assert rates.loc["harness.flaky", "retry_rate"] > 0.5
    lat = analysis.latency(latest)
    assert lat.loc["harness.slow", "runtime_p50"] > 10 * lat.loc["harness.add", "runtime_p50"]
    assert (lat["wait_p50"] >= 0).all()
    slowest = analysis.slowest(latest, 5)
    assert (slowest["name"] == "harness.slow").all()
    assert slowest["runtime"].is_monotonic_decreasing
    top = analysis.top_exceptions(latest)
    assert top["count"].sum() == 280

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
