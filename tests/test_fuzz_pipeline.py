"""The whole pipeline under hostile input (hypothesis).

Real recorded events (``data/celery-events-small.jsonl``) are mutated: wrong types, huge
ints (``10**400``), NaN, inf, negative, ancient (year 702) and far-future (2100, 9999)
numbers, missing keys, unicode. They go through ``Recorder.replay`` (archiver.State ->
ParquetCamera -> sink -> Parquet files in ``tmp_path``) and are read back with
``Archive.latest("tasks")``. The oracle is Celery's own State fed the same events,
skipping those it raises on (``tests.test_state.celery_state``: without its time-ordered
heap and drift log line, which are not state semantics).
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archiver import Archive
from archiver import schema as S
from archiver.cli import cli
from archiver.record import Recorder
from tests.helpers import SMALL, celery_state, read_events

#: Celery's drift warning raises for far-future times; the oracle keeps quiet.
pytestmark = pytest.mark.usefixtures("celery_drift_warning_off")

EVENTS = read_events(SMALL)
FIRST, LAST = EVENTS[0]["timestamp"], max(e["timestamp"] for e in EVENTS)
DAY = 86_400.0
HUGE = 10**400

ODD_VALUES = [
    HUGE,
    -HUGE,
    2**63,
    -(2**31) - 1,
    math.nan,
    math.inf,
    -math.inf,
    -1.0,
    0,
    -39_000_000_000.0,  # year 734
    -40_000_000_000.0,  # year 702
    4_102_444_800.0,  # 2100-01-01
    253_402_214_400.0,  # 9999-12-31
    True,
    False,
    None,
    "yesterday",
    "1795622261",
    "ünïcødé ☃ \u202e \U0001f600",
    "\udc80 lone surrogate",
    [1, 2],
    {"a": 1},
]
TASK_FIELDS = [
    "timestamp",
    "local_received",
    "runtime",
    "retries",
    "clock",
    "name",
    "result",
    "args",
    "kwargs",
    "exception",
    "traceback",
    "eta",
    "expires",
    "parent_id",
    "root_id",
    "routing_key",
    "exchange",
]
WORKER_FIELDS = ["timestamp", "local_received", "pid", "active", "processed", "loadavg", "clock"]
# Removing a key: for tasks, Celery raises on a missing uuid/hostname/timestamp/...
REMOVABLE = ["uuid", "hostname", "timestamp", "local_received", "clock", "name", "runtime"]

TIME_COLUMNS = S.TASK_TIME_FIELDS
TEXT_COLUMNS = (
    "name",
    "state",
    "worker",
    *S.TASK_TEXT_FIELDS,
    "exchange",
    "routing_key",
    "client",
    "root_id",
    "parent_id",
)
COMPARED = (*TEXT_COLUMNS, *TIME_COLUMNS, "retries", "runtime", "clock")


@st.composite
def mutated_streams(draw, max_mutations: int = 25, far_future: bool = False):
    """The recording with some events mutated in place; returns the list of events.

    ``far_future``: one task event (which Celery accepts) is dated 2100. Any event may
    be mutated, the first included: the replay clock's rule keeps it from starting there.
    """
    events = [dict(e) for e in EVENTS]
    if far_future:
        index = draw(st.sampled_from([i for i, e in enumerate(events) if "uuid" in e]))
        events[index]["timestamp"] = 4_102_444_800.0
    for _ in range(draw(st.integers(0, max_mutations))):
        index = draw(st.integers(0, len(events) - 1))
        event = events[index]
        if draw(st.booleans()) and len(event) > 1:
            key = draw(st.sampled_from(REMOVABLE))
            event.pop(key, None)
            continue
        fields = TASK_FIELDS if event["type"].startswith("task-") else WORKER_FIELDS
        event[draw(st.sampled_from(fields))] = copy.deepcopy(draw(st.sampled_from(ODD_VALUES)))
    return events


BEAT = next(e for e in EVENTS if e["type"] == "worker-heartbeat")


def _celery_raises(event: dict) -> bool:
    """Whether Celery's State raises on ``event``: all but stateless once the heap is off,
    so a fresh State whose worker has a heartbeat (a new heartbeat is compared with the
    last one) tells. The reference itself must not see a half-applied event."""
    probe = celery_state()
    hostname = event.get("hostname")
    if isinstance(hostname, str):
        probe.event({**BEAT, "hostname": hostname})
    try:
        probe.event(copy.deepcopy(event))
    except Exception:
        return True
    return False


def _celery_ignores(event: dict) -> bool:
    """Worker events Celery silently ignores (a missing key): archiver counts them."""
    return event.get("type", "").startswith("worker-") and not {
        "hostname",
        "timestamp",
        "local_received",
    } <= set(event)


def reference(events: list[dict], max_tasks: int = 10_000) -> tuple[dict, int]:
    """uuid -> Celery's last task object for it (evicted ones too), and how many events
    archiver should reject."""
    state = celery_state(max_tasks_in_memory=max_tasks)
    last, rejected = {}, 0
    for event, original in zip(events, EVENTS):
        if event != original and _celery_raises(event):
            rejected += 1
            continue
        rejected += _celery_ignores(event)
        result = state.event(dict(event))  # Celery's State adds keys to the dict
        if result and event["type"].startswith("task-"):
            last[event["uuid"]] = result[0][0]
    return last, rejected


def _micros(value) -> int | None:
    """What a timestamp[us] column holds for a Celery time value (None: does not fit)."""
    if type(value) not in (int, float):
        return None
    try:
        micros = round(value * 1e6)
    except (OverflowError, ValueError):
        return None
    return micros if abs(micros) < 9.2e18 else None


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return str(value)


def _int(value, bits: int) -> int | None:
    return value if type(value) is int and -(2 ** (bits - 1)) <= value < 2 ** (bits - 1) else None


def _float(value) -> float | None:
    if type(value) not in (int, float):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def expected_row(task) -> dict:
    """The archived form of a Celery task object: each value, or None if it does not fit."""
    row = {c: _text(getattr(task, c, None)) for c in TEXT_COLUMNS if c != "worker"}
    row["worker"] = task.worker.hostname if task.worker is not None else None
    row.update({c: _micros(getattr(task, c, None)) for c in TIME_COLUMNS})
    row["retries"] = _int(task.retries, 32)
    row["clock"] = _int(task.clock, 64)
    row["runtime"] = _float(task.runtime)
    return row


def archived_rows(root: Path) -> dict[str, dict]:
    """uuid -> the last archived row, as plain Python values (times as UTC micros)."""
    df = Archive(str(root)).latest("tasks")
    for c in TIME_COLUMNS:  # years 702 and 9999 need microseconds: no detour through ns
        assert str(df[c].dt.tz) == "UTC" and df[c].dt.unit == "us", c
        micros = df[c].array.asi8.tolist()
        df[c] = pd.Series(
            [None if na else m for m, na in zip(micros, df[c].isna())], dtype=object, index=df.index
        )
    rows = {}
    for record in df[["uuid", *COMPARED]].to_dict("records"):
        row = {}
        for c in COMPARED:
            value = record[c]
            if value is None or value is pd.NaT or value is pd.NA:
                value = None
            elif c in ("retries", "clock"):
                value = None if pd.isna(value) else int(value)
            elif c == "runtime" and not isinstance(value, str):
                value = float(value)
            row[c] = value
        rows[record["uuid"]] = row
    return rows


def _same(got, want) -> bool:
    if isinstance(got, float) and isinstance(want, float) and math.isnan(got):
        return math.isnan(want)
    if isinstance(got, float) and math.isnan(got):  # pandas reads a null runtime as NaN
        return want is None
    return got == want


def assert_archive_matches_celery(root: Path, summary, last: dict) -> None:
    archived = archived_rows(root)
    assert set(archived) == set(last), "every task Celery saw is archived, and no other"
    diffs, must_count = [], {}
    for uuid, task in last.items():
        want, got = expected_row(task), archived[uuid]
        for column in COMPARED:
            if not _same(got[column], want[column]):
                diffs.append((uuid, column, got[column], want[column]))
            nulled = want[column] is None and getattr(task, column, None) is not None
            if nulled and column != "worker":
                must_count[column] = must_count.get(column, 0) + 1
    assert diffs == [], diffs[:10]
    for column, n in must_count.items():  # a value nulled in a final row was counted
        assert summary.values_nulled.get(f"tasks.{column}", 0) >= n, (column, n)


def partitions(root: Path) -> list[pd.Timestamp]:
    found = []
    for path in root.glob("*/date=*/hour=*"):
        date = re.search(r"date=([^/]+)", str(path)).group(1)
        hour = int(re.search(r"hour=(\d+)", str(path)).group(1))
        found.append(pd.Timestamp(date, tz="UTC") + pd.Timedelta(hours=hour))
    return found


def replay(root: Path, events: list[dict], **options):
    recorder = Recorder(str(root), **options)
    return recorder, recorder.replay([dict(e) for e in events])


# -- the fuzz tests ---------------------------------------------------------------------------
FUZZ = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(events=mutated_streams())
def test_mutated_events_archive_what_celery_holds(tmp_path_factory, events):
    """No exception escapes; every task's last archived row is what Celery's State holds
    (a value that does not fit its column is null, and counted); archiver rejects exactly
    the events Celery raises on (and the worker events Celery ignores)."""
    root = tmp_path_factory.mktemp("archive")
    recorder, summary = replay(root, events, freq=1.0)
    last, rejected = reference(events)
    assert summary.rejected == rejected
    assert recorder.event_errors == 0  # the State itself never raised
    assert summary.rows_dropped == summary.rows_unwritten == summary.changes_dropped == 0
    assert_archive_matches_celery(root, summary, last)


@FUZZ
@given(
    events=mutated_streams(max_mutations=10),
    max_tasks=st.sampled_from([3, 20, 50]),
    freq=st.sampled_from([60.0, 3600.0]),
)
def test_small_max_tasks_and_big_freq_lose_no_task(tmp_path_factory, events, max_tasks, freq):
    """With few tasks in memory and snapshots far apart, every uuid Celery saw is archived
    with its final state: a full change log makes the camera write early."""
    root = tmp_path_factory.mktemp("archive")
    _, summary = replay(root, events, freq=freq, max_tasks=max_tasks)
    last, _ = reference(events, max_tasks=max_tasks)
    assert summary.changes_dropped == 0
    assert summary.early_snapshots > 0
    assert_archive_matches_celery(root, summary, last)


@FUZZ
@given(events=mutated_streams(far_future=True))
def test_no_partition_far_from_the_events(tmp_path_factory, events):
    """No partition folder lies outside [first event - 1 day, last event + 1 day]."""
    root = tmp_path_factory.mktemp("archive")
    replay(root, events, freq=1.0)
    low, high = (
        pd.Timestamp(FIRST - DAY, unit="s", tz="UTC"),
        pd.Timestamp(LAST + DAY, unit="s", tz="UTC"),
    )
    assert all(low <= p <= high for p in partitions(root)), sorted(set(partitions(root)))


@pytest.mark.parametrize("timestamp", [-HUGE, -1e300], ids=["-10**400", "-1e300"])
def test_a_bad_first_timestamp_does_not_stop_the_replay(tmp_path, timestamp):
    """The first event sets the replay clock: 10**400 before the epoch must not end the
    replay in an OverflowError (the timer), nor make every snapshot fail (captured_at)."""
    events = [dict(e) for e in EVENTS]
    events[0]["timestamp"] = timestamp
    recorder, summary = replay(tmp_path, events, freq=1.0)
    last, _ = reference(events)
    assert summary.snapshots > 0 and recorder.event_errors == 0
    assert_archive_matches_celery(tmp_path, summary, last)
    assert all(p.year == 2026 for p in partitions(tmp_path))


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(events=mutated_streams(max_mutations=60))
def test_mutated_events_archive_what_celery_holds_long(tmp_path_factory, events):
    """The same, with more examples and more mutations (slow)."""
    test_mutated_events_archive_what_celery_holds.hypothesis.inner_test(tmp_path_factory, events)


# -- the command line: counted, and exit 74 -----------------------------------------------------
def test_record_counts_nulled_values_and_exits_74(tmp_path):
    """`archiver record --replay` with a 10**400 runtime and heartbeat: every task is
    written, the summary names the nulled columns, and the run exits 74."""
    events = [dict(e) for e in EVENTS]
    succeeded = next(e for e in events if e["type"] == "task-succeeded")
    succeeded["runtime"] = HUGE
    beat = next(e for e in events if e["type"] == "worker-heartbeat")
    beat["local_received"] = beat["timestamp"] = HUGE
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    archive = tmp_path / "archive"
    result = CliRunner().invoke(
        cli, ["record", "--replay", str(path), "--archive", str(archive), "--quiet"]
    )
    assert result.exit_code == 74, result.output
    # counted per row written: the worker's row is written at every snapshot until it beats again
    assert re.search(
        r"values stored as null \(tasks.runtime 1, workers.last_heartbeat \d+\)", result.output
    )
    tasks = Archive(str(archive)).latest("tasks")
    assert set(tasks["uuid"]) == {e["uuid"] for e in EVENTS if "uuid" in e}
    assert tasks.loc[tasks["uuid"] == succeeded["uuid"], "runtime"].isna().all()


def test_record_with_tiny_max_tasks_reports_early_snapshots_and_exits_0(tmp_path):
    """`--max-tasks 5 --freq 3600`: early snapshots, counted in the summary; nothing dropped."""
    archive = tmp_path / "archive"
    result = CliRunner().invoke(
        cli,
        [
            *("record", "--replay", str(SMALL), "--archive", str(archive), "--quiet"),
            *("--max-tasks", "5", "--freq", "3600"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert re.search(r"\d+ early snapshots \(change log full\)", result.output)
    assert "dropped" not in result.output
    last, _ = reference(EVENTS, max_tasks=5)
    tasks = Archive(str(archive)).latest("tasks")
    assert set(tasks["uuid"]) == set(last)
