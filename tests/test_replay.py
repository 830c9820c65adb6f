"""The Recorder's replay: the library API, and the clock it keeps from hostile timestamps."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from archiver import Archive, Polaroid
from archiver.errors import ArchiverError
from archiver.record import Recorder, load_camera_class
from archiver.sources import LineStats, read_events
from archiver.state import State, event_problem

from .helpers import YEAR_702, YEAR_2100


# -- Recorder.replay (library API) -----------------------------------------------------------
def test_recorder_replay_library_api(tmp_path, sample_events):
    """Recorder.replay() of a list records every event, a snapshot per freq and a final one."""
    recorder = Recorder(str(tmp_path), freq=2.0)
    summary = recorder.replay(sample_events)
    assert summary.events == len(sample_events) and summary.malformed == 0
    assert summary.snapshots == 14  # 26.1 s of events every 2 s, and the final one
    assert summary.rows > 0 and summary.bytes > 0
    assert summary.files == 3 and summary.tasks == 2110
    assert "Recorded 9,604 events" in summary.line()
    assert len(Archive(tmp_path).load("snapshots")) == 14


def test_speed_keeps_the_gaps_between_events(tmp_path, small_events):
    """Speed keeps the gaps between events."""
    events = []
    for i, e in enumerate(small_events[:30]):
        events.append(dict(e, timestamp=1000.0 + i * 1.0))  # 29 s of event time
    pulled = []

    def source():
        for e in events:
            pulled.append(time.monotonic())
            yield e

    recorder = Recorder(str(tmp_path), freq=5.0)
    started = time.monotonic()
    recorder.replay(source(), speed=50)
    assert time.monotonic() - started >= 29 / 50 - 0.01
    # the event pulled at i was applied at (i-1)/50 s after the start, give or take
    for i in range(2, 30, 7):
        assert pulled[i] - pulled[0] == pytest.approx((i - 1) / 50, abs=0.05)


def test_timestamps_that_cannot_move_the_clock(tmp_path, small_events):
    """Timestamps that cannot move the clock."""
    base = small_events[10]["timestamp"]
    events = [dict(e) for e in small_events[:50]]
    events[5]["timestamp"] = float("nan")
    events[6]["timestamp"] = float("inf")
    events[7]["timestamp"] = "yesterday"
    events[8]["timestamp"] = True
    events[9]["timestamp"] = 10**400
    recorder = Recorder(str(tmp_path), freq=0.5)
    summary = recorder.replay(events)
    assert summary.events == 50
    assert summary.rejected >= 1  # the NaN one, at least: skipped, not fatal
    captured = Archive(tmp_path).load("snapshots")["captured_at"].map(lambda t: t.value / 1e9)
    assert captured.between(base - 10, base + 10).all()


def test_no_events_at_all(tmp_path):
    """A replay of nothing takes one final, empty snapshot."""
    summary = Recorder(str(tmp_path)).replay([])
    assert summary.events == 0 and summary.snapshots == 1  # the final one, at wall time
    assert Archive(tmp_path).load("snapshots")["tasks_in_state"].tolist() == [0]


def test_stop_from_another_thread(tmp_path, small_events):
    """stop() from another thread ends a replay early with what was read."""
    recorder = Recorder(str(tmp_path))

    def slow():
        for i, e in enumerate(small_events):
            if i == 100:
                threading.Timer(0.05, recorder.stop).start()
                time.sleep(0.3)
            yield e

    summary = recorder.replay(slow())
    assert 100 <= summary.events <= 100 + 64  # a stop is seen within 64 events at speed 0
    assert len(Archive(tmp_path).latest("tasks")) == summary.tasks


def test_limit_and_duration_validation(tmp_path):
    """A zero limit or duration is refused with an ArchiverError naming the parameter."""
    with pytest.raises(ArchiverError, match=r"^limit must"):
        Recorder(str(tmp_path), limit=0)
    with pytest.raises(ArchiverError, match=r"^duration must"):
        Recorder(str(tmp_path), duration=0)
    with pytest.raises(ArchiverError, match=r"^speed must"):
        Recorder(str(tmp_path)).replay([], speed=-1)


def test_a_non_parquet_polaroid(tmp_path, small_events):
    """A Polaroid that writes no Parquet is run by the Recorder too."""
    shots = []

    class Cam(Polaroid):
        def on_shutter(self, state):
            shots.append(state.event_count)

    summary = Recorder(str(tmp_path), camera=Cam).replay(small_events)
    assert summary.snapshots == len(shots) == 9 and shots[-1] == len(small_events)
    assert summary.rows == summary.files == 0


def test_load_camera_class():
    """load_camera_class takes module:Class and dotted paths, and refuses a non-camera."""
    from archiver import ParquetCamera

    assert load_camera_class("archiver:ParquetCamera") is ParquetCamera
    assert load_camera_class("archiver.parquet_camera.ParquetCamera") is ParquetCamera
    with pytest.raises(ArchiverError, match="is not a camera"):
        load_camera_class("archiver:State")


# -- the replay clock: rejected events and lone outliers never move it ----------------------


def _day(ts: float) -> str:
    return f"{datetime.fromtimestamp(ts, tz=timezone.utc):%Y-%m-%d}"


def partition_dates(archive) -> set[str]:
    """Every ``date=`` folder of every table."""
    return {p.name.split("=", 1)[1] for p in archive.glob("*/date=*")}


def replay_lines(tmp_path, name, events, **options):
    """Replay ``events`` (dicts, or raw lines) from a JSON-lines file; returns the summary."""
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in events))
    return Recorder(str(tmp_path / name), **options).replay_file(str(path))


def snapshot_times(archive) -> list[float]:
    snaps = Archive(archive).load("snapshots")
    return sorted(snaps["captured_at"].map(lambda t: t.value / 1e9))


@pytest.fixture(scope="module")
def clean(tmp_path_factory, sample_events_module):
    """The sample replayed as recorded: its snapshot times and its tasks' latest rows."""
    tmp = tmp_path_factory.mktemp("clean")
    replay_lines(tmp, "archive", sample_events_module, freq=2.0)
    latest = Archive(tmp / "archive").latest("tasks").set_index("uuid")
    return snapshot_times(tmp / "archive"), latest


@pytest.fixture(scope="module")
def sample_events_module():
    from .helpers import SAMPLE
    from .helpers import read_events as read

    return read(SAMPLE)


def assert_like_clean(archive, clean, events):
    times, latest = clean
    stamps = [e["timestamp"] for e in events]
    assert partition_dates(archive) <= {_day(min(stamps)), _day(max(stamps))}
    assert snapshot_times(archive) == times  # --since/--until windows see what they saw
    got = Archive(archive).latest("tasks").set_index("uuid")
    cols = ["state", "name", "worker", "retries"]
    assert got.loc[latest.index, cols].equals(latest[cols])
    return got


def test_a_rejected_line_in_2100_does_not_move_the_clock(tmp_path, sample_events_module, clean):
    """A rejected line in 2100 does not move the clock."""
    events = [dict(e) for e in sample_events_module]
    bad = {k: v for k, v in events[5000].items() if k != "type"}
    bad["timestamp"] = YEAR_2100
    mixed = [*events[:5000], bad, *events[5000:]]
    summary = replay_lines(tmp_path, "archive", mixed, freq=2.0)
    assert summary.rejected == 1 and summary.lost == 0
    assert_like_clean(tmp_path / "archive", clean, events)


@pytest.mark.parametrize("when", [YEAR_2100, YEAR_702], ids=["2100", "702"])
@pytest.mark.parametrize("where", [0, 4000], ids=["first", "middle"])
def test_one_outlier_event_never_moves_the_clock(
    tmp_path, sample_events_module, clean, when, where
):
    """One outlier event never moves the clock."""
    events = [dict(e) for e in sample_events_module]
    sent = next(e for e in events if e["type"] == "task-sent")
    outlier = dict(sent, uuid="outlier-task", timestamp=when)
    assert event_problem(outlier) is None  # an event the State accepts...
    summary = replay_lines(
        tmp_path, "archive", [*events[:where], outlier, *events[where:]], freq=2.0
    )
    assert summary.rejected == 0 and summary.lost == 0
    got = assert_like_clean(tmp_path / "archive", clean, events)
    assert got.loc["outlier-task", "state"] == "PENDING"  # ...is archived, at the clock


@pytest.mark.parametrize("ahead", [YEAR_2100, 20 * 3600.0], ids=["2100", "20h-ahead"])
def test_a_burst_from_one_bad_clock_never_moves_the_clock(
    tmp_path, sample_events_module, clean, ahead
):
    """One task's sent/received/started/succeeded and two heartbeats in a row from a worker
    whose clock is off (in 2100, or 20 hours ahead): archived, at the clock, which stays."""
    events = [dict(e) for e in sample_events_module]
    base = events[3000]["timestamp"]
    shift = ahead if ahead > 1e9 else base + ahead
    beat = next(e for e in events if e["type"] == "worker-heartbeat")
    sent = next(e for e in events if e["type"] == "task-sent")
    host = {"hostname": beat["hostname"]}
    burst = [
        dict(sent, uuid="bad-clock-task", timestamp=shift),
        dict(sent, type="task-received", uuid="bad-clock-task", timestamp=shift + 0.1, **host),
        dict(sent, type="task-started", uuid="bad-clock-task", timestamp=shift + 0.2, **host),
        dict(sent, type="task-succeeded", uuid="bad-clock-task", timestamp=shift + 0.3, **host),
        dict(beat, timestamp=shift + 0.4, local_received=shift + 0.4),
        dict(beat, timestamp=shift + 2.4, local_received=shift + 2.4),
    ]
    summary = replay_lines(tmp_path, "archive", [*events[:3000], *burst, *events[3000:]], freq=2.0)
    assert summary.rejected == 0 and summary.lost == 0
    got = assert_like_clean(tmp_path / "archive", clean, events)
    assert got.loc["bad-clock-task", "state"] == "SUCCESS"


def test_a_real_gap_moves_the_clock(tmp_path, sample_events_module):
    """A real gap moves the clock."""
    events = [dict(e) for e in sample_events_module]
    half = len(events) // 2
    gap = 3 * 86_400.0  # the recording paused for 3 days, then many events
    for e in events[half:]:
        e["timestamp"] += gap
        e["local_received"] += gap
    replay_lines(tmp_path, "archive", events, freq=2.0)
    first, last = events[0]["timestamp"], max(e["timestamp"] for e in events)
    assert partition_dates(tmp_path / "archive") == {_day(first), _day(last)}
    times = snapshot_times(tmp_path / "archive")
    assert times[0] >= first and times[-1] == pytest.approx(last, abs=1e-6)
    assert sum(t > first + gap for t in times) >= 5


# Integers beyond 2**53 are left out here: storing them is conversion's part (issue 9,
# item 1); the whole-pipeline fuzz of the merged branch feeds them too.
EVENT_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.sampled_from([YEAR_2100, YEAR_702, 0.0, 1e11, -1.0, 253_402_300_800.0]),
    st.text(max_size=5),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(data=st.data())
def test_fuzzed_lines_through_read_events_and_the_replay(
    tmp_path_factory, sample_events_module, data
):
    """Mutated real events and junk lines: no exception, every line counted, clock in range."""
    events = [dict(e) for e in sample_events_module[:300]]
    lines: list[str | bytes] = [json.dumps(e) for e in events]
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(events) - 1))
        event = dict(events[i])
        key = data.draw(st.sampled_from(["timestamp", "type", "uuid", "clock", "local_received"]))
        if data.draw(st.booleans()):
            event.pop(key, None)
        else:
            event[key] = data.draw(EVENT_VALUES)
        try:
            line = json.dumps(event)
        except ValueError:
            continue
        lines.insert(data.draw(st.integers(0, len(lines))), line)
    junk = data.draw(st.lists(st.binary(max_size=20), max_size=3))
    raw = [x.encode() if isinstance(x, str) else x for x in lines]
    for j in junk:
        raw.insert(data.draw(st.integers(0, len(raw))), j.replace(b"\n", b" "))
    stats = LineStats()
    parsed = list(read_events(raw, stats))
    assert stats.events == len(parsed) and stats.events + stats.malformed <= len(raw)
    assert stats.events >= len(lines) - 4  # every line of a real event still read

    tmp = tmp_path_factory.mktemp("fuzz")
    summary = Recorder(str(tmp), freq=2.0).replay(parsed)
    # nothing lost but values that do not fit their column (stored as null, counted)
    assert summary.events == len(parsed)
    assert summary.lost == sum(summary.values_nulled.values())
    day = 86_400.0
    lo = min(e["timestamp"] for e in events) - day  # the rule: within a day of the
    hi = max(e["timestamp"] for e in events) + day  # events around
    assert partition_dates(tmp) <= {_day(lo), _day(lo + day), _day(hi - day), _day(hi)}
    times = snapshot_times(tmp)
    assert lo <= times[0] and times[-1] <= hi
    state = State()
    for event in parsed:
        state.event(event)
    assert set(Archive(tmp).latest("tasks")["uuid"]) == set(state.tasks)
