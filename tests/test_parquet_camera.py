"""ParquetCamera end to end: the recorded Celery events replayed into Parquet and read back."""

from __future__ import annotations

import math
import os
import uuid as uuidlib

import duckdb
import fsspec
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from celery.events.state import State as CeleryState

from archiver import Archive, ParquetCamera, State
from archiver import schema as S
from archiver.convert import redact_hash
from tests.helpers import FakeTimer, FlakyHandler, assert_no_hidden_files, drive, visible_files
from tests.helpers import celery_state as celery_oracle

TABLES = ("snapshots", "tasks", "workers")
COMPARED = (
    "name",
    "state",
    "worker",
    "retries",
    "result",
    "exception",
    "traceback",
    "args",
    "kwargs",
    "eta",
    "expires",
    "runtime",
    "exchange",
    "routing_key",
    "client",
    "root_id",
    "parent_id",
    "clock",
    *S.TASK_TIME_FIELDS,
)


def replay(state, root, events, *, freq=1.0, offset=0.0, **options):
    """Drive ``state`` + a ParquetCamera over ``events``; returns (camera, captures)."""
    clock = [events[0]["timestamp"]]
    options.setdefault("flush_interval", 1e9)  # only flush_rows and cancel() write
    camera = ParquetCamera(
        state, str(root), freq=freq, timer=FakeTimer(), clock=lambda: clock[0] + offset, **options
    )
    camera.install()
    captures = drive(state, camera, events, freq=freq, clock=clock)
    camera.cancel()
    return camera, captures + 1  # cancel() takes the last one


def touched_per_snapshot(events, freq=1.0) -> list[set[str]]:
    """The task uuids each snapshot of ``drive`` sees events for (last one: cancel)."""
    groups: list[set[str]] = [set()]
    next_shot = events[0]["timestamp"] + freq
    for event in events:
        while event["timestamp"] >= next_shot:
            groups.append(set())
            next_shot += freq
        if event["type"].startswith("task-"):
            groups[-1].add(event["uuid"])
    return groups


@pytest.fixture(scope="module")
def celery_state(sample_events) -> CeleryState:
    """Celery's own State fed the recorded events: the reference."""
    state = CeleryState()
    for event in sample_events:
        state.event(dict(event))
    return state


def _micros(value) -> int | None:
    return None if value is None else round(value * 1e6)


def expected_rows(state: CeleryState) -> dict[str, dict]:
    return task_rows(state.tasks)


def task_rows(tasks) -> dict[str, dict]:
    """uuid -> the compared fields of each Celery task object, times as UTC micros."""
    rows = {}
    for uuid, task in tasks.items():
        row = {f: getattr(task, f) for f in COMPARED}
        row["worker"] = task.worker.hostname if task.worker is not None else None
        for f in S.TASK_TIME_FIELDS:
            row[f] = _micros(row[f])
        rows[uuid] = row
    return rows


def last_rows_arrow(table: pa.Table) -> dict[str, dict]:
    """Last row per uuid, by captured_at then snapshot_id, timestamps as UTC micros."""
    for f in S.TASK_TIME_FIELDS:
        assert table.schema.field(f).type == pa.timestamp("us", tz="UTC")
        table = table.set_column(
            table.schema.get_field_index(f), f, table.column(f).cast(pa.int64())
        )
    rows = sorted(table.to_pylist(), key=lambda r: (r["captured_at"], r["snapshot_id"]))
    return {r["uuid"]: {f: r[f] for f in COMPARED} for r in rows}


def _plain(value):
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, pd.Timestamp):
        assert str(value.tz) == "UTC"
        return value.value // 1000
    return value


def last_rows_pandas(df: pd.DataFrame) -> dict[str, dict]:
    for f in S.TASK_TIME_FIELDS:
        assert isinstance(df[f].dtype, pd.DatetimeTZDtype) and str(df[f].dt.tz) == "UTC", f
    df = df.sort_values(["captured_at", "snapshot_id"], kind="stable")
    df = df.drop_duplicates("uuid", keep="last")
    out = {}
    for record in df[["uuid", *COMPARED]].to_dict("records"):
        row = {f: _plain(record[f]) for f in COMPARED}
        for f in ("retries", "clock"):
            row[f] = None if row[f] is None else int(row[f])
        out[record["uuid"]] = row
    return out


def assert_same_tasks(got: dict[str, dict], expected: dict[str, dict]) -> None:
    assert set(got) == set(expected)
    diffs = [
        (uuid, f, got[uuid][f], want[f])
        for uuid, want in expected.items()
        for f in COMPARED
        if got[uuid][f] != want[f]
    ]
    assert diffs == [], diffs[:10]


def assert_clean_archive(root) -> None:
    """Only complete, visible .parquet files; each sorted by captured_at, with metadata."""
    assert_no_hidden_files(root)
    for rel in visible_files(root):
        assert rel.endswith(".parquet"), rel
        table, date, hour, _ = rel.split(os.sep)
        assert table in TABLES and date.startswith("date=") and hour.startswith("hour=")
        path = os.path.join(root, rel)
        meta = pq.read_metadata(path)
        assert meta.metadata[b"archiver.table"] == table.encode()
        assert meta.metadata[b"archiver.schema_version"] == str(S.SCHEMA_VERSION).encode()
        stamps = pq.read_table(path, columns=["captured_at"]).column("captured_at")
        values = stamps.cast(pa.int64()).to_pylist()
        assert values == sorted(values), rel
        # the partition is the UTC hour of captured_at
        first = pd.Timestamp(values[0], unit="us", tz="UTC")
        assert (date, hour) == (f"date={first:%Y-%m-%d}", f"hour={first.hour}")


# -- the recorded events against Celery's State -------------------------------------------
@pytest.mark.parametrize("flush_rows", [100_000, 200], ids=["cancel-only", "many-files"])
@pytest.mark.parametrize("state_cls", [State, CeleryState], ids=["archiver", "celery"])
def test_replay_matches_celery_state(tmp_path, sample_events, celery_state, state_cls, flush_rows):
    """The last row per task, read back with pyarrow and with pandas, is what Celery's
    State says for every task, whichever State the camera photographs."""
    camera, captures = replay(state_cls(), tmp_path, sample_events, flush_rows=flush_rows)
    assert camera.sink.stats.write_errors == 0
    files = visible_files(tmp_path / "tasks")
    assert (len(files) == 1) if flush_rows == 100_000 else (len(files) > 10)
    assert_clean_archive(tmp_path)
    expected = expected_rows(celery_state)

    dataset = ds.dataset(tmp_path / "tasks", format="parquet", partitioning="hive")
    table = dataset.to_table()
    assert table.schema.field("hour").type == pa.int32()
    assert_same_tasks(last_rows_arrow(table), expected)

    df = pd.read_parquet(tmp_path / "tasks")
    assert len(df) == table.num_rows
    assert_same_tasks(last_rows_pandas(df), expected)

    snapshots = pd.read_parquet(tmp_path / "snapshots")
    assert len(snapshots) == captures == camera.snapshots_taken
    assert snapshots["tasks_written"].sum() == table.num_rows
    final = snapshots.sort_values("captured_at").iloc[-1]
    assert final["tasks_in_state"] == len(celery_state.tasks)
    assert final["event_count"] == len(sample_events)
    workers = pd.read_parquet(tmp_path / "workers")
    assert set(workers["hostname"].astype(str)) == set(celery_state.workers.keys())


@pytest.mark.parametrize("state_cls", [State, CeleryState], ids=["archiver", "celery"])
def test_changes_mode_writes_a_task_again_only_when_an_event_touched_it(
    tmp_path, sample_events, state_cls
):
    """Changes mode writes a task again only when an event touched it."""
    replay(state_cls(), tmp_path, sample_events, freq=0.5)
    groups = touched_per_snapshot(sample_events, freq=0.5)
    tasks = pq.read_table(tmp_path / "tasks", columns=["snapshot_id", "uuid"]).to_pandas()
    per_snapshot = tasks.groupby("snapshot_id")["uuid"].apply(set).sort_index().tolist()
    assert per_snapshot == [g for g in groups if g]
    assert len(tasks) == sum(len(g) for g in groups)


@pytest.mark.parametrize("state_cls", [State, CeleryState], ids=["archiver", "celery"])
def test_full_mode_writes_every_task_each_snapshot(tmp_path, sample_events, state_cls):
    """Full mode writes every task each snapshot."""
    _, captures = replay(state_cls(), tmp_path, sample_events, mode="full", freq=2.0)
    groups = touched_per_snapshot(sample_events, freq=2.0)
    assert len(groups) == captures
    seen: set[str] = set()
    expected = []
    for group in groups:
        seen |= group
        expected.append(len(seen))
    tasks = pq.read_table(tmp_path / "tasks", columns=["snapshot_id"]).to_pandas()
    assert tasks.groupby("snapshot_id").size().sort_index().tolist() == expected


@pytest.mark.parametrize("redact_mode", ["null", "hash"])
def test_redaction_on_the_recorded_events(tmp_path, sample_events, celery_state, redact_mode):
    """Redaction on the recorded events."""
    replay(
        State(),
        tmp_path,
        sample_events,
        redact=("args", "kwargs", "result"),
        redact_mode=redact_mode,
        redact_key="k" if redact_mode == "hash" else None,
    )
    got = last_rows_arrow(ds.dataset(tmp_path / "tasks", partitioning="hive").to_table())
    expected = expected_rows(celery_state)
    for row in expected.values():
        for f in ("args", "kwargs", "result"):
            if redact_mode == "null" or row[f] is None:
                row[f] = None
            else:
                row[f] = redact_hash(row[f], "k")
    assert_same_tasks(got, expected)
    assert any(r["args"] for r in got.values()) == (redact_mode == "hash")


def test_redact_accepts_a_comma_separated_string(tmp_path, small_events):
    """Redact accepts a comma separated string."""
    camera, _ = replay(State(), tmp_path, small_events, redact="args, kwargs")
    assert camera.converter.redact == ("args", "kwargs")


# -- other readers --------------------------------------------------------------------------
def test_duckdb_and_polars_read_the_archive_without_options(tmp_path, sample_events):
    """Duckdb and polars read the archive without options."""
    replay(State(), tmp_path, sample_events, flush_rows=500)
    rows = pq.read_table(tmp_path / "tasks").num_rows
    glob = f"{tmp_path}/tasks/**/*.parquet"
    types = duckdb.sql(
        f"SELECT typeof(hour), typeof(date), typeof(captured_at), count(*) "
        f"FROM read_parquet('{glob}') GROUP BY ALL"
    ).fetchall()
    assert len(types) == 1
    hour_type, date_type, ts_type, count = types[0]
    assert hour_type in ("BIGINT", "INTEGER")
    assert date_type in ("DATE", "VARCHAR")
    assert ts_type == "TIMESTAMP WITH TIME ZONE"
    assert count == rows
    frame = pl.read_parquet(tmp_path / "tasks")
    assert frame.height == rows
    assert frame.schema["hour"].is_integer()
    assert frame.schema["date"] in (pl.Date, pl.String)
    assert frame.schema["sent"] == pl.Datetime("us", "UTC")
    assert frame.schema["state"] in (pl.Categorical, pl.String)


def test_archive_lists_and_loads_what_the_camera_wrote(tmp_path, small_events):
    """Archive lists and loads what the camera wrote."""
    replay(State(), tmp_path, small_events, flush_rows=300)
    archive = Archive(tmp_path)
    assert archive.tables() == list(TABLES)
    files = archive.files("tasks")
    assert files and all(os.path.basename(f).startswith("part-") for f in files)
    df = archive.load("tasks")
    assert len(df) == pq.read_table(tmp_path / "tasks").num_rows


def test_partitions_come_from_captured_at_in_utc_only(tmp_path, small_events):
    """Snapshots across midnight UTC land in two dates; event strings never make paths."""
    events = [dict(e) for e in small_events]
    for event in events:
        if event.get("name"):
            event["name"] = "../../date=1999-01-01/hour=99/evil"
        event["hostname"] = "../" + event["hostname"]
    start = events[0]["timestamp"]
    midnight = (start // 86400 + 1) * 86400
    span = events[-1]["timestamp"] - start
    camera, _ = replay(State(), tmp_path, events, offset=midnight - start - span / 2)
    assert camera.sink.stats.write_errors == 0
    dirs = sorted({os.path.dirname(p) for p in visible_files(tmp_path)})
    day0 = pd.Timestamp(midnight - 1, unit="s", tz="UTC")
    day1 = pd.Timestamp(midnight, unit="s", tz="UTC")
    assert dirs == sorted(
        f"{t}/date={d:%Y-%m-%d}/hour={d.hour}" for t in TABLES for d in (day0, day1)
    )
    assert_clean_archive(tmp_path)
    names = pq.read_table(tmp_path / "tasks", columns=["name"]).column("name")
    assert "../../date=1999-01-01/hour=99/evil" in names.to_pylist()


# -- failures --------------------------------------------------------------------------------
def test_a_failing_filesystem_keeps_the_rows_and_writes_them_once_it_recovers(
    tmp_path, sample_events, celery_state, caplog
):
    """Writes fail for the first half of the replay: the camera logs, keeps the rows,
    never raises, and writes them all when the filesystem works again."""
    handler = FlakyHandler()
    handler.fail = "open"
    clock = [sample_events[0]["timestamp"]]
    state = State()
    camera = ParquetCamera(
        state,
        str(tmp_path),
        timer=FakeTimer(),
        clock=lambda: clock[0],
        flush_rows=100,
        filesystem=pafs.PyFileSystem(handler),
    )
    camera.sink.clock = lambda: clock[0]  # retry delays in replay time
    camera.install()
    half = len(sample_events) // 2
    drive(state, camera, sample_events[:half], clock=clock)
    assert camera.sink.stats.write_errors > 0
    assert camera.sink.stats.rows_written == 0
    assert camera.sink.buffered_rows > 0
    assert "Permission denied" in caplog.text
    assert visible_files(tmp_path) == []
    handler.fail = None
    drive(state, camera, sample_events[half:], clock=clock)
    camera.cancel()
    stats = camera.sink.stats
    assert stats.rows_dropped == 0
    assert stats.rows_written == stats.rows_buffered
    assert_clean_archive(tmp_path)
    table = ds.dataset(tmp_path / "tasks", partitioning="hive").to_table()
    assert_same_tasks(last_rows_arrow(table), expected_rows(celery_state))


def test_past_max_buffer_rows_the_oldest_rows_are_dropped_and_counted(tmp_path, sample_events):
    """Past max buffer rows the oldest rows are dropped and counted."""
    handler = FlakyHandler()
    handler.fail = "write"
    state = State()
    clock = [sample_events[0]["timestamp"]]
    camera = ParquetCamera(
        state,
        str(tmp_path),
        timer=FakeTimer(),
        clock=lambda: clock[0],
        flush_rows=100,
        max_buffer_rows=1000,
        filesystem=pafs.PyFileSystem(handler),
    )
    camera.install()
    drive(state, camera, sample_events, clock=clock)
    stats = camera.sink.stats
    kept = camera.sink.buffered_rows
    assert 0 < kept <= 1000  # whole snapshots are dropped, in every table
    assert stats.rows_dropped == stats.rows_buffered - kept > 0
    handler.fail = None
    camera.cancel()
    assert kept <= stats.rows_written <= 1000  # and the final snapshot
    assert stats.rows_written + stats.rows_dropped == stats.rows_buffered
    assert_clean_archive(tmp_path)
    # what survived is the newest rows, up to the final snapshot
    stamps = pq.read_table(tmp_path / "snapshots").column("captured_at").cast(pa.int64())
    assert max(stamps.to_pylist()) == round(clock[0] * 1e6)
    assert min(stamps.to_pylist()) > round(sample_events[0]["timestamp"] * 1e6) + 10**6

    def ids(table: str) -> set[str]:
        return set(pq.read_table(tmp_path / table).column("snapshot_id").to_pylist())

    assert ids("tasks") | ids("workers") <= ids("snapshots")  # dropped in step


def test_files_are_written_outside_the_state_lock(tmp_path, small_events):
    """The shutter only converts; I/O happens after the state lock is released."""
    state = State()
    handler = FlakyHandler()
    locked_while_writing = []
    real = handler.open_output_stream

    def spy(path, metadata):
        locked_while_writing.append(state._mutex.locked())
        return real(path, metadata)

    handler.open_output_stream = spy
    replay(state, tmp_path, small_events, flush_rows=50, filesystem=pafs.PyFileSystem(handler))
    assert locked_while_writing and not any(locked_while_writing)


# -- storage and concurrency ----------------------------------------------------------------
def test_memory_uri_through_fsspec(small_events):
    """A memory:// archive through fsspec holds every row written and no hidden file."""
    uri = f"memory://archiver-camera-{uuidlib.uuid4().hex}"
    try:
        camera, _ = replay(State(), uri, small_events, flush_rows=200)
        fs = camera.location.fs
        assert camera.sink.stats.files_written > 3
        table = ds.dataset(
            camera.location.join("tasks"), filesystem=fs, format="parquet", partitioning="hive"
        ).to_table()
        snapshots = ds.dataset(
            camera.location.join("snapshots"), filesystem=fs, partitioning="hive"
        ).to_table()
        assert table.num_rows == pc.sum(snapshots.column("tasks_written")).as_py() > 0
        infos = fs.get_file_info(pafs.FileSelector(camera.location.root, recursive=True))
        assert not [i.path for i in infos if i.base_name.startswith((".", "_"))]
    finally:
        fsspec.filesystem("memory").rm(uri[len("memory://") :], recursive=True)


def test_two_cameras_write_into_one_archive(tmp_path, sample_events):
    """Distinct file names, and together all rows of both."""
    half = len(sample_events) // 2
    a, _ = replay(State(), tmp_path, sample_events[:half], flush_rows=300)
    b, _ = replay(State(), tmp_path, sample_events[half:], flush_rows=300)
    assert a.camera_id != b.camera_id
    names = [os.path.basename(p) for p in visible_files(tmp_path)]
    assert len(names) == len(set(names))
    assert {a.camera_id, b.camera_id} == {n.split("-")[2] for n in names}
    tasks = ds.dataset(tmp_path / "tasks", partitioning="hive").to_table()
    snapshots = pq.read_table(tmp_path / "snapshots").to_pandas()
    assert snapshots["snapshot_id"].nunique() == a.snapshots_taken + b.snapshots_taken
    assert tasks.num_rows == snapshots["tasks_written"].sum()
    assert a.sink.stats.rows_written + b.sink.stats.rows_written == sum(
        pq.read_metadata(os.path.join(tmp_path, p)).num_rows for p in visible_files(tmp_path)
    )


# -- the converter is replaceable -----------------------------------------------------------
class CounterConverter:
    """A converter for a toy state that is just a dict of counters."""

    schemas = {
        "counters": pa.schema(
            [
                pa.field("captured_at", pa.timestamp("us", tz="UTC"), nullable=False),
                pa.field("snapshot_id", pa.string()),
                pa.field("key", pa.dictionary(pa.int32(), pa.string())),
                pa.field("value", pa.int64()),
            ]
        )
    }

    def convert(self, state, *, captured_at, snapshot_id):
        keys = sorted(state)
        schema = self.schemas["counters"]
        batch = pa.RecordBatch.from_pydict(
            {
                "captured_at": [round(captured_at * 1e6)] * len(keys),
                "snapshot_id": [snapshot_id] * len(keys),
                "key": keys,
                "value": [state[k] for k in keys],
            },
            schema=schema,
        )
        return {"counters": batch}


def test_a_custom_converter_for_a_non_celery_state(tmp_path):
    """A custom converter for a non celery state."""
    counters: dict[str, int] = {}
    now = [1_800_000_000.0]
    camera = ParquetCamera(
        counters, tmp_path, converter=CounterConverter(), timer=FakeTimer(), clock=lambda: now[0]
    )
    camera.install()
    for i in range(5):
        counters["a"] = counters.get("a", 0) + 1
        counters[f"k{i}"] = i
        now[0] += 1
        camera.capture()
    camera.cancel()
    table = ds.dataset(tmp_path / "counters", partitioning="hive").to_table()
    assert table.num_rows == sum(range(2, 7)) + 6
    last = table.filter(pc.field("captured_at") == table.column("captured_at")[-1])
    assert dict(zip(last.column("key").to_pylist(), last.column("value").to_pylist())) == {
        "a": 5,
        **{f"k{i}": i for i in range(5)},
    }
    assert visible_files(tmp_path) == [
        os.path.join("counters", "date=2027-01-15", "hour=8", os.path.basename(p))
        for p in camera.sink.stats.files
    ]


def test_converter_options_need_the_default_converter(tmp_path):
    """Converter options need the default converter."""
    with pytest.raises(ValueError, match="default converter"):
        ParquetCamera({}, tmp_path, converter=CounterConverter(), mode="full", timer=FakeTimer())
    with pytest.raises(ValueError, match="redact"):
        ParquetCamera(State(), tmp_path, redact=("name",), timer=FakeTimer())


# -- nothing dropped between snapshots --------------------------------------------------------
@pytest.mark.parametrize("max_tasks", [5, 50])
def test_a_full_change_log_takes_an_early_snapshot_and_drops_nothing(
    tmp_path, sample_events, max_tasks
):
    """Few tasks in memory, snapshots an hour apart: every task is still archived with the
    last state Celery saw for it (evicted ones too), and the change log stays bounded."""
    clock = [sample_events[0]["timestamp"]]
    state, reference = (
        State(max_tasks_in_memory=max_tasks),
        celery_oracle(max_tasks_in_memory=max_tasks),
    )
    camera = ParquetCamera(
        state, str(tmp_path), freq=3600, timer=FakeTimer(), clock=lambda: clock[0]
    )
    camera.install()
    last, held = {}, 0
    for event in sample_events:
        clock[0] = max(clock[0], event["timestamp"])
        state.event(dict(event))
        held = max(held, len(state._changed_tasks))
        result = reference.event(dict(event))
        if event["type"].startswith("task-"):
            last[event["uuid"]] = result[0][0]  # Celery's task object, evicted or not
    camera.cancel()
    assert state.changes_dropped == 0
    assert held <= max_tasks + 1
    assert camera.early_snapshots >= len(last) // (max_tasks + 1)
    assert camera.snapshots_taken == camera.early_snapshots + 1  # the timer never fired
    table = ds.dataset(tmp_path / "tasks", format="parquet", partitioning="hive").to_table()
    assert_same_tasks(last_rows_arrow(table), task_rows(last))
    assert state.on_changes_full is None  # cancel() unhooks the camera


def test_without_a_camera_the_change_log_is_capped_and_drops_are_counted():
    """A State nobody photographs does not grow without bound (drops counted, no signal)."""
    state = State(max_tasks_in_memory=4)
    for i in range(40):
        state.event(
            {
                "type": "task-received",
                "uuid": f"t{i}",
                "hostname": "w",
                "timestamp": 1.0 + i,
                "local_received": 1.0 + i,
                "clock": i,
            }
        )
    assert len(state._changed_tasks) <= state.max_changes_held == 16
    assert state.changes_dropped == 40 - len(state._changed_tasks)
