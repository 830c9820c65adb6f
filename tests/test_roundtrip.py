"""Events -> State -> convert -> sink -> read: generated Celery event sequences recorded by the
Parquet camera read back, by ``Archive.latest()``, as Celery's own State saw them."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from celery.events.state import State as CeleryState
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import archiver

from .helpers import FakeTimer, drive

pytestmark = pytest.mark.usefixtures("celery_drift_warning_off")

#: 2026-11-25 15:00 UTC: generated times fall in this hour and the next two.
BASE = 1_764_082_800.0
HOSTS = ("w1@vm", "w2@vm", "w3@other")
TASK_TIME_FIELDS = ("sent", "received", "started", "succeeded", "failed", "retried", "revoked")
TASK_TIME_FIELDS += ("rejected", "timestamp")
TEXT_FIELDS = ("args", "kwargs", "result", "exception", "traceback", "eta", "expires")
TEXT_FIELDS += ("root_id", "parent_id")
CATEGORY_FIELDS = ("name", "state", "exchange", "routing_key", "client")

texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
times = st.integers(0, 3 * 3600 * 10**6 - 1).map(lambda us: BASE + us / 1e6)


@st.composite
def task_events(draw: st.DrawFn, uuid: str) -> list[dict[str, Any]]:
    """The events of one task: sent, received, started and an outcome, some left out."""
    host = draw(st.sampled_from(HOSTS))
    outcome = draw(
        st.sampled_from(["task-succeeded", "task-failed", "task-retried", "task-revoked"])
    )
    kinds = [k for k in ("task-sent", "task-received", "task-started") if draw(st.booleans())]
    kinds.append(outcome)
    events = []
    for kind in kinds:
        event: dict[str, Any] = {
            "type": kind,
            "uuid": uuid,
            "timestamp": draw(times),
            "clock": draw(st.integers(0, 10**6)),
            "hostname": host if kind != "task-sent" else "client@vm",
            "utcoffset": 0,
            "pid": 4242,
        }
        if kind in ("task-sent", "task-received"):
            event.update(
                name=draw(st.sampled_from(["cluster.add", "cluster.fail", "harness.slow"])),
                args=draw(texts),
                kwargs=draw(texts),
                retries=draw(st.integers(0, 5)),
                root_id=uuid,
                parent_id=draw(st.none() | st.just("parent-1")),
                eta=draw(st.none() | texts),
                expires=None,
            )
        if kind == "task-sent":
            event.update(exchange="", routing_key="celery", queue="celery")
        if kind == "task-succeeded":
            event.update(result=draw(texts), runtime=draw(st.floats(0, 100)))
        if kind in ("task-failed", "task-retried"):
            event.update(exception=draw(texts), traceback=draw(texts))
        if kind == "task-revoked":
            event.update(terminated=False, signum=None, expired=draw(st.booleans()))
        events.append(event)
    return events


@st.composite
def worker_events(draw: st.DrawFn, host: str) -> list[dict[str, Any]]:
    """A worker coming online, some heartbeats, maybe going offline."""
    kinds = ["worker-online"] + ["worker-heartbeat"] * draw(st.integers(0, 3))
    if draw(st.booleans()):
        kinds.append("worker-offline")
    return [
        {
            "type": kind,
            "hostname": host,
            "timestamp": draw(times),
            "clock": draw(st.integers(0, 10**6)),
            "utcoffset": 0,
            "pid": draw(st.integers(1, 2**22)),
            "freq": draw(st.sampled_from([2.0, 5.0])),
            "active": draw(st.integers(0, 8)),
            "processed": draw(st.integers(0, 10**6)),
            "loadavg": draw(st.lists(st.floats(0, 64), min_size=3, max_size=3)),
            "sw_ident": "py-celery",
            "sw_ver": "5.5.3",
            "sw_sys": "Linux",
        }
        for kind in kinds
    ]


@st.composite
def event_sequences(draw: st.DrawFn) -> list[dict[str, Any]]:
    """The events of a few tasks and workers, interleaved in time order with a few swapped."""
    tasks = draw(st.integers(1, 12))
    events = [e for i in range(tasks) for e in draw(task_events(f"task-{i}"))]
    hosts = draw(st.lists(st.sampled_from(HOSTS), unique=True, max_size=3))
    events += [e for h in hosts for e in draw(worker_events(h))]
    for event in events:  # as Celery's receiver adds it
        event["local_received"] = event["timestamp"] + 0.001
    events.sort(key=lambda e: e["timestamp"])
    for _ in range(draw(st.integers(0, 3))):  # events do arrive a little out of order
        i = draw(st.integers(0, len(events) - 1))
        j = min(len(events) - 1, i + 1)
        events[i], events[j] = events[j], events[i]
    return events


def micros(seconds: Any) -> int | None:
    """Epoch seconds as the archive stores them: rounded to the microsecond."""
    return None if seconds is None else round(seconds * 1e6)


def cell(value: Any) -> Any:
    """A pandas cell as Python: missing values (None, NaN, NaT) are None, times are µs."""
    if isinstance(value, list) or hasattr(value, "tolist"):
        return list(value)
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.value // 1000
    return value


def record(path: Path, events: list[dict[str, Any]]) -> None:
    """Events into archiver's State, photographed every 10 minutes and at the end."""
    state = archiver.State()
    clock = [BASE]
    camera = archiver.ParquetCamera(state, path, timer=FakeTimer(), clock=lambda: clock[0])
    drive(state, camera, events, freq=600.0, clock=clock)
    camera.capture()
    camera.cancel()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(events=event_sequences())
def test_latest_is_celerys_state_field_by_field(events):
    """Whatever the tasks and workers did, the archive's last rows equal Celery's State."""
    celery = CeleryState()
    for event in events:
        celery.event(dict(event))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "archive"
        record(path, events)
        arch = archiver.Archive(path)
        tasks = {row["uuid"]: row for row in arch.latest("tasks").to_dict("records")}
        workers = (
            {row["hostname"]: row for row in arch.latest("workers").to_dict("records")}
            if "workers" in arch.tables()
            else {}
        )
    assert set(tasks) == set(celery.tasks)
    for uuid, task in celery.tasks.items():
        row = {k: cell(v) for k, v in tasks[uuid].items()}
        for field in TASK_TIME_FIELDS:
            assert row[field] == micros(getattr(task, field)), (uuid, field)
        for field in (*CATEGORY_FIELDS, *TEXT_FIELDS, "retries", "clock"):
            assert row[field] == getattr(task, field), (uuid, field)
        assert row["worker"] == (task.worker.hostname if task.worker else None), uuid
        assert row["runtime"] == task.runtime, uuid
    assert set(workers) == set(celery.workers)
    for host, worker in celery.workers.items():
        row = {k: cell(v) for k, v in workers[host].items()}
        for field in ("pid", "freq", "active", "processed", "loadavg", "sw_ident", "sw_ver"):
            assert row[field] == getattr(worker, field), (host, field)
        assert row["sw_sys"] == worker.sw_sys, host
        last = worker.heartbeats[-1] if worker.heartbeats else None
        assert row["last_heartbeat"] == micros(last), host
