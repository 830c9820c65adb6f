"""Checksums, fsync and tables in step, on real files, real failures and real SIGKILLs.

* every data file (recorder, compaction) carries Parquet page checksums;
* every file is fsynced before its rename, and its directory after (counted by
  wrapping ``os.fsync``, the files and the calls being real);
* a snapshot's row becomes visible only once its task and worker rows are, after a
  failed write and after a recorder SIGKILLed anywhere in its flushes.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import multiprocessing
import os
import random
import shutil
import signal
import uuid as uuidlib
from pathlib import Path
from typing import ClassVar

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import archiver
from archiver import maintenance, sink, storage
from archiver.convert import CeleryConverter
from archiver.sink import ParquetSink

from .helpers import (
    HOUR,
    SAMPLE,
    SHIFT,
    SMALL,
    FakeTimer,
    FlakyHandler,
    ObjectStore,
    drive,
    read_events,
    record_small_files,
    shifted,
)

SCHEMAS = CeleryConverter.schemas
WRITER = "c1c1c1c1c1c1"
#: Kill points per default run, and in the long run.
KILLS = 24
SLOW_KILLS = 200
SEED = 20261130
CTX = multiprocessing.get_context("forkserver")
CTX.set_forkserver_preload(["archiver.parquet_camera", "tests.test_durability"])


# -- helpers ---------------------------------------------------------------------------
def data_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.parquet") if not p.name.startswith("."))


def temp_files(root: Path) -> list[Path]:
    return sorted(root.rglob(".part-*.tmp"))


def flipped_read(path: Path, column: str, tmp: Path) -> list | Exception:
    """Flip one bit in the last byte of ``column``'s first chunk of a copy of ``path``;
    the column read back with checksum verification, or the error."""
    meta = pq.read_metadata(path)
    group = meta.row_group(0)
    leaves = (group.column(i) for i in range(meta.num_columns))
    chunk = next(c for c in leaves if c.path_in_schema.split(".")[0] == column)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    copy = tmp / f"flipped-{path.name}"
    data = bytearray(path.read_bytes())
    data[start + chunk.total_compressed_size - 1] ^= 0x01
    copy.write_bytes(bytes(data))
    try:
        table = pq.ParquetFile(copy, page_checksum_verification=True).read(columns=[column])
    except (OSError, pa.ArrowException) as exc:
        return exc
    return table.column(0).to_pylist()


def read_table(root: Path, table: str, columns: list[str]) -> pd.DataFrame:
    if not (root / table).exists() or not data_files(root / table):
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})
    data = ds.dataset(root / table, partitioning="hive").to_table(columns=columns)
    return data.to_pandas().astype(object)


def assert_in_step(
    root: Path, reference: dict[str, pd.DataFrame] | None = None, *, orphans: bool = False
) -> int:
    """``snapshots`` is the commit record: each of its rows has exactly its task and
    worker rows (those of ``reference``, a recording without failures, if given), and
    (unless ``orphans``, as before a crash is recovered) no task or worker row lacks
    its snapshot row. Returns the number of snapshots."""
    got = {t: read_table(root, t, cols) for t, cols in COLUMNS.items()}
    snaps = got["snapshots"]
    assert not snaps["snapshot_id"].duplicated().any(), "a snapshot row twice"
    ids = set(snaps["snapshot_id"])
    for table in ("tasks", "workers"):
        if not orphans:
            lone = set(got[table]["snapshot_id"]) - ids
            assert not lone, f"{table} rows without their snapshot row: {sorted(lone)[:3]}"
        got[table] = got[table][got[table]["snapshot_id"].isin(ids)]
    per_snapshot = got["tasks"].groupby("snapshot_id").size()
    for sid, written in zip(snaps["snapshot_id"], snaps["tasks_written"]):
        assert per_snapshot.get(sid, 0) == written, f"snapshot {sid}: task rows missing"
    if reference is not None:
        for table, df in got.items():
            want = reference[table][reference[table]["snapshot_id"].isin(ids)]
            key = COLUMNS[table]
            assert sorted(map(tuple, df[key].values.tolist())) == sorted(
                map(tuple, want[key].values.tolist())
            ), f"{table} rows differ from the recording's"
    return len(ids)


COLUMNS = {
    "tasks": ["snapshot_id", "uuid", "state", "captured_at"],
    "workers": ["snapshot_id", "hostname", "captured_at"],
    "snapshots": ["snapshot_id", "tasks_written", "event_count"],
}


# -- checksums ---------------------------------------------------------------------------
@pytest.mark.parametrize("checksums", [True, False])
def test_recorded_files_carry_page_checksums(tmp_path, small_events, monkeypatch, checksums):
    """A flipped bit in a task's uuid (plain, uncompressed: nothing else can notice)
    is an error on read with checksums, and a silently different uuid without."""
    monkeypatch.setattr(sink, "PAGE_CHECKSUMS", checksums)
    clock = [small_events[0]["timestamp"]]
    state = archiver.State()
    camera = archiver.ParquetCamera(
        state, tmp_path / "a", timer=FakeTimer(), clock=lambda: clock[0], compression="none"
    )
    drive(state, camera, small_events, clock=clock)
    camera.cancel()
    files = data_files(tmp_path / "a" / "tasks")
    assert files
    for path in files:
        original = pq.read_table(path, columns=["uuid"]).column(0).to_pylist()
        result = flipped_read(path, "uuid", tmp_path)
        if checksums:
            assert isinstance(result, Exception), path
            assert "CRC" in str(result) or "checksum" in str(result).lower()
        else:
            assert result != original and len(result) == len(original)


def test_compacted_files_carry_page_checksums(tmp_path, small_events):
    """Every column chunk of a compacted file: a flipped bit is an error on read."""
    path = tmp_path / "a"
    record_small_files(path, shifted(small_events, SHIFT), flush_rows=50)
    report = maintenance.compact(path)
    assert report.files_out
    compacted = [p for p in data_files(path) if "-compact-" in p.name]
    assert compacted
    for file in compacted:
        pq.ParquetFile(file, page_checksum_verification=True).read()  # intact: fine
        for column in pq.read_schema(file).names:
            assert isinstance(flipped_read(file, column, tmp_path), Exception), (file, column)


# -- fsync -----------------------------------------------------------------------------
@pytest.fixture
def fsyncs(monkeypatch) -> list[tuple[str, list[str] | None]]:
    """Every real ``os.fsync``: (path, the directory's listing then, or None for a file)."""
    calls: list[tuple[str, list[str] | None]] = []
    real = os.fsync

    def counting(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        calls.append((path, sorted(os.listdir(path)) if os.path.isdir(path) else None))
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


def synced_after(calls, directory: Path, name: str) -> bool:
    """Whether ``directory`` was fsynced while holding ``name``."""
    return any(p == str(directory) and name in (listing or ()) for p, listing in calls)


def test_each_file_is_fsynced_before_its_rename_and_its_directory_after(
    tmp_path, small_events, fsyncs
):
    """Each file is fsynced before its rename and its directory after."""
    path = tmp_path / "a"
    record_small_files(path, shifted(small_events, SHIFT), flush_rows=50)
    files = data_files(path)
    synced_files = {p for p, listing in fsyncs if listing is None}
    for file in files:
        assert str(file.parent / f".{file.name}.tmp") in synced_files, file
        assert synced_after(fsyncs, file.parent, file.name), file
    for directory in [p for p in path.rglob("*") if p.is_dir()]:
        assert synced_after(fsyncs, directory.parent, directory.name), directory
    assert len(fsyncs) >= 2 * len(files)

    fsyncs.clear()
    report = maintenance.compact(path)
    assert report.files_in > report.files_out > 0
    synced_files = {p for p, listing in fsyncs if listing is None}
    for file in data_files(path):
        if "-compact-" in file.name:
            assert str(file.parent / f".{file.name}.tmp") in synced_files, file
            assert synced_after(fsyncs, file.parent, file.name), file
    for directory in {f.parent for f in data_files(path)}:
        # the last fsync of a compacted partition saw its inputs deleted
        last = [listing for p, listing in fsyncs if p == str(directory)]
        if last:
            assert last[-1] == sorted(os.listdir(directory)), directory

    fsyncs.clear()
    report = maintenance.expire(path, older_than="1h", dry_run=False)
    assert report.partitions
    for table in ("tasks", "workers", "snapshots"):
        # the hour went (renamed aside, deleted), then its empty day: the table's
        # directory was fsynced without it
        assert os.listdir(path / table) == []
        assert (str(path / table), []) in fsyncs, table


def test_no_fsync_when_turned_off_and_none_on_object_stores(
    tmp_path, small_events, fsyncs, monkeypatch
):
    """The control: the counter sees nothing when archiver does not fsync."""
    monkeypatch.setattr(storage, "FSYNC", False)
    record_small_files(tmp_path / "a", shifted(small_events, SHIFT), flush_rows=50)
    assert data_files(tmp_path / "a") and fsyncs == []
    monkeypatch.setattr(storage, "FSYNC", True)
    memory = storage.resolve("/x", fsspec.filesystem("memory"))
    assert memory.atomic_rename and not memory.durable


# -- tables in step: failed writes -------------------------------------------------------
def failing_tasks(handler: FlakyHandler, when) -> None:
    """Make ``handler`` fail to open a tasks file while ``when(path)``."""
    real = handler.open_output_stream

    def open_output_stream(path, metadata):
        if "/tasks/" in path and when(path):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(path, metadata)

    handler.open_output_stream = open_output_stream


def camera_over(handler, root: Path, clock: list[float], **options) -> archiver.ParquetCamera:
    camera = archiver.ParquetCamera(
        archiver.State(),
        root,
        timer=FakeTimer(),
        clock=lambda: clock[0],
        filesystem=pafs.PyFileSystem(handler),
        **options,
    )
    camera.camera_id = camera.sink.writer_id = WRITER
    return camera


def reference(tmp_path: Path, events: list[dict], **options) -> dict[str, pd.DataFrame]:
    """The same recording without failures (snapshot ids are the same: fixed writer id)."""
    root = tmp_path / "reference"
    clock = [events[0]["timestamp"]]
    camera = camera_over(FlakyHandler(), root, clock, **options)
    drive(camera.state, camera, events, clock=clock, freq=0.25)
    camera.cancel()
    return {t: read_table(root, t, cols) for t, cols in COLUMNS.items()}


def test_no_snapshot_row_before_its_task_rows(tmp_path, small_events):
    """The tasks write fails: neither snapshot nor worker rows appear; once it works,
    everything is written, and the tables agree with a recording without failures."""
    events = shifted(small_events, SHIFT)
    expected = reference(tmp_path, events, flush_rows=100)
    handler = FlakyHandler()
    failing = [True]
    failing_tasks(handler, lambda path: failing[0])
    root = tmp_path / "a"
    clock = [events[0]["timestamp"]]
    camera = camera_over(handler, root, clock, flush_rows=100)
    drive(camera.state, camera, events, clock=clock, freq=0.25)
    camera.flush()
    assert camera.sink.stats.write_errors >= 1
    assert data_files(root) == [] and temp_files(root) == []
    assert camera.sink.buffered_rows == camera.sink.stats.rows_buffered
    failing[0] = False
    camera.cancel()
    assert camera.sink.buffered_rows == 0
    assert assert_in_step(root, expected) == len(expected["snapshots"])


def test_an_hour_whose_task_file_fails_is_held_back_whole(tmp_path, small_events):
    """Across an hour boundary, only the hour whose task file fails waits."""
    start = small_events[0]["timestamp"] + SHIFT
    boundary = (start // HOUR + 1) * HOUR
    events = shifted(small_events, SHIFT + boundary - start - 4)  # 4 s before the hour
    expected = reference(tmp_path, events, flush_rows=10**6)
    later = f"hour={int(boundary // HOUR) % 24}/"
    handler = FlakyHandler()
    failing = [True]
    failing_tasks(handler, lambda path: failing[0] and later in path)
    root = tmp_path / "a"
    clock = [events[0]["timestamp"]]
    camera = camera_over(handler, root, clock, flush_rows=10**6)
    drive(camera.state, camera, events, clock=clock, freq=0.25)
    written = camera.flush()
    assert written and all(later not in p for p in written)
    assert {p.parent.parent.parent.name for p in data_files(root)} == {
        "tasks",
        "workers",
        "snapshots",
    }
    assert_in_step(root, expected)
    failing[0] = False
    camera.cancel()
    assert any(later in str(p) for p in data_files(root))
    assert assert_in_step(root, expected) == len(expected["snapshots"])


def hour_boundary_events(events: list[dict], before: float) -> tuple[list[dict], list[str]]:
    """``events`` moved to start ``before`` seconds before an hour; the two hours' paths."""
    start = events[0]["timestamp"] + SHIFT
    boundary = (start // HOUR + 1) * HOUR
    hours = [f"hour={int(boundary // HOUR - 1) % 24}/", f"hour={int(boundary // HOUR) % 24}/"]
    return shifted(events, SHIFT + boundary - start - before), hours


FAILURES = st.lists(
    st.frozensets(
        st.tuples(
            st.sampled_from(["tasks", "workers", "snapshots"]),
            st.sampled_from([0, 1]),
            st.sampled_from(["open", "move"]),
        ),
        max_size=4,
    ),
    min_size=1,
    max_size=6,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(failures=FAILURES)
@example(failures=[frozenset([("workers", 0, "move")])])  # once showed hour 1 without workers
@example(failures=[frozenset([("tasks", 0, "open")]), frozenset()])
def test_random_write_failures_never_show_a_snapshot_before_its_rows(
    tmp_path_factory, small_events, failures
):
    """Opens and renames fail at random, per table and hour, flush after flush: a
    snapshot row is never visible without all its rows; with only failed opens, no
    row is visible without its snapshot row either; once writes work, all is there."""
    events, hours = hour_boundary_events(small_events, 4)
    root = tmp_path_factory.mktemp("fuzz")
    failing: set[tuple[str, int, str]] = set()
    handler = FlakyHandler()
    real_open, real_move = handler.open_output_stream, handler.move

    def fails(path: str, kind: str) -> bool:
        return any(k == kind and f"/{t}/" in path and hours[h] in path for t, h, k in failing)

    def open_output_stream(path, metadata):
        if fails(path, "open"):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real_open(path, metadata)

    def move(src, dest):
        if fails(src, "move"):
            raise OSError(errno.EIO, "Input/output error", src)
        return real_move(src, dest)

    handler.open_output_stream, handler.move = open_output_stream, move
    clock = [events[0]["timestamp"]]
    camera = camera_over(handler, root / "a", clock, flush_rows=10**6)
    state = camera.state
    per_flush = -(-len(events) // len(failures))
    moved = False
    next_shot = clock[0] + 0.25
    for i, event in enumerate(events):  # drive(), with a flush every per_flush events
        while event["timestamp"] >= next_shot:
            clock[0] = next_shot
            camera.capture()
            next_shot += 0.25
        state.event(dict(event))
        if (i + 1) % per_flush == 0:
            failing.clear()
            failing.update(failures[i // per_flush])
            moved |= any(k == "move" for _, _, k in failing)
            camera.flush()
            assert temp_files(root / "a") == []
            assert_in_step(root / "a", FUZZ_REFERENCE[0], orphans=moved)
    failing.clear()
    clock[0] = next_shot
    camera.cancel()
    assert camera.sink.buffered_rows == 0
    assert assert_in_step(root / "a", FUZZ_REFERENCE[0]) == len(FUZZ_REFERENCE[0]["snapshots"])


#: The fuzz test's reference recording (same events, same snapshot ids), made once.
FUZZ_REFERENCE: list[dict[str, pd.DataFrame]] = []


@pytest.fixture(autouse=True, scope="module")
def _fuzz_reference(tmp_path_factory):
    events, _ = hour_boundary_events(read_events(SMALL), 4)
    root = tmp_path_factory.mktemp("fuzz-reference")
    FUZZ_REFERENCE[:] = [reference(root, events, flush_rows=10**6)]


class _FailingObjectStore(ObjectStore):
    """An object store (no rename) on which writing a tasks file fails while ``failing``."""

    failing = True
    order: ClassVar[list[str]] = []

    def _open(self, path, mode="rb", **kwargs):
        if "w" in mode:
            if self.failing and "/tasks/" in path:
                raise OSError(errno.ENOSPC, "No space left on device", path)
            type(self).order.append(path.split("/")[2])
        return super()._open(path, mode, **kwargs)


def test_on_object_stores_snapshots_are_written_last(small_events):
    """On object stores snapshots are written last."""
    fs = _FailingObjectStore()
    root = f"/archiver-s3-{uuidlib.uuid4().hex}"
    try:
        clock = [small_events[0]["timestamp"]]
        camera = archiver.ParquetCamera(
            archiver.State(), root, timer=FakeTimer(), clock=lambda: clock[0], filesystem=fs
        )
        assert not camera.location.atomic_rename
        drive(camera.state, camera, small_events, clock=clock)
        camera.flush()
        assert not fs.exists(f"{root}/snapshots") or not fs.find(f"{root}/snapshots")
        fs.failing = False
        camera.cancel()
        assert _FailingObjectStore.order[-1] == "snapshots"
        assert ObjectStore.moves == 0
        snaps = pq.read_table(f"{root}/snapshots", filesystem=fs).num_rows
        assert snaps > 0 and camera.sink.buffered_rows == 0
    finally:
        fs.rm(root, recursive=True)


# -- tables in step: crashes -------------------------------------------------------------
class Crash(BaseException):
    """Stops a flush where it is, like a SIGKILL (nothing is cleaned up)."""


class StepHandler(pafs.FSSpecHandler):
    """The local filesystem, calling ``hook(step)`` before each file open and rename."""

    def __init__(self, hook) -> None:
        super().__init__(fsspec.filesystem("file"))
        self.hook = hook

    def open_output_stream(self, path, metadata):
        self.hook("open")
        return super().open_output_stream(path, metadata)

    def move(self, src, dest):
        self.hook("move")
        return super().move(src, dest)


def crash_events() -> list[dict]:
    """The first 3,000 events of the sample, across an hour boundary."""
    events = read_events(SAMPLE)[:3000]
    start = events[0]["timestamp"] + SHIFT
    return shifted(events, SHIFT + (start // HOUR + 1) * HOUR - start - 3)


def record_with_steps(root: Path, events: list[dict], hook) -> None:
    """Record ``events`` (many flushes) with ``hook`` called at each file step:
    open, rename, fsync."""
    real_fsync = storage.fsync_path

    def fsync_path(path: str) -> None:
        real_fsync(path)
        hook("fsync")

    storage.fsync_path = fsync_path
    try:
        clock = [events[0]["timestamp"]]
        camera = camera_over(StepHandler(hook), root, clock, flush_rows=150)
        drive(camera.state, camera, events, clock=clock, freq=0.25)
        camera.cancel()
    finally:
        storage.fsync_path = real_fsync


def _child(root: str, kill_at: int, ready) -> None:
    steps = itertools.count(1)

    def hook(step: str) -> None:
        if next(steps) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    ready.set()
    record_with_steps(Path(root), crash_events(), hook)


def test_a_flush_stopped_after_its_first_rename_is_rolled_forward(tmp_path):
    """Stopped between renames: the next sink renames the rest, the commit table last."""
    events = crash_events()
    root = tmp_path / "ref"
    record_with_steps(root, events, lambda step: None)
    expected = {t: read_table(root, t, cols) for t, cols in COLUMNS.items()}
    outcomes = set()
    for stop_at_move in range(1, 7):
        root = tmp_path / f"a{stop_at_move}"
        moves = itertools.count(1)

        def hook(step: str, n=stop_at_move, moves=moves) -> None:
            if step == "move" and next(moves) == n:
                raise Crash

        with pytest.raises(Crash):
            record_with_steps(root, events, hook)
        temps = temp_files(root)
        flushes = {sink.FLUSH_FILE.match(t.name[1:-4])["flush"] for t in temps}
        before = data_files(root)
        started = any(sink.FLUSH_FILE.match(f.name)["flush"] in flushes for f in before)
        assert_in_step(root, expected, orphans=True)
        ParquetSink(root, SCHEMAS)  # a new recorder starts on the archive
        assert temp_files(root) == []
        assert len(data_files(root)) == len(before) + (len(temps) if started else 0)
        outcomes.add(started)
        assert_in_step(root, expected)
    assert outcomes == {True, False}


def test_cleanup_finishes_a_flush_only_once_its_temporary_files_are_old(tmp_path):
    """Cleanup finishes a flush only once its temporary files are old."""
    events = crash_events()
    moves = itertools.count(1)

    def hook(step: str) -> None:
        if step == "move" and next(moves) == 2:
            raise Crash

    root = tmp_path / "a"
    with pytest.raises(Crash):
        record_with_steps(root, events, hook)
    temps = temp_files(root)
    assert temps
    maintenance.compact(root)
    assert temp_files(root) == temps  # young: maybe a recorder's flush in progress
    for temp in temps:
        os.utime(temp, (os.path.getmtime(temp) - 2 * HOUR,) * 2)
    report = maintenance.compact(root)
    assert temp_files(root) == [] and report.recovered >= len(temps)
    assert_in_step(root)


def kill_points(total: int, points: int | None) -> list[int]:
    if points is None or points >= total:
        return list(range(1, total + 1))
    rng = random.Random(SEED)
    return [1, 2, *sorted(rng.sample(range(3, total), points - 3)), total]


def sigkill_recorder(tmp_path: Path, points: int | None) -> None:
    events = crash_events()
    steps: list[str] = []
    root = tmp_path / "ref"
    record_with_steps(root, events, steps.append)
    expected = {t: read_table(root, t, cols) for t, cols in COLUMNS.items()}
    assert steps.count("move") > 20, steps.count("move")
    root = tmp_path / "a"
    rolled = 0
    for kill_at in kill_points(len(steps), points):
        shutil.rmtree(root, ignore_errors=True)
        ready = CTX.Event()
        proc = CTX.Process(target=_child, args=(str(root), kill_at, ready))
        proc.start()
        try:
            assert ready.wait(60), "the child did not start"
            proc.join(120)
            assert proc.exitcode == -signal.SIGKILL, (kill_at, proc.exitcode)
        finally:
            if proc.is_alive():
                proc.kill()
                proc.join()
        before = temp_files(root)
        assert_in_step(root, expected, orphans=True)  # readers before the next start
        with contextlib.suppress(FileNotFoundError):
            ParquetSink(root, SCHEMAS)  # the next start finishes or undoes the flush
        assert temp_files(root) == [], kill_at
        rolled += bool(before)
        assert_in_step(root, expected)
    assert rolled > 0  # some kills did land inside a flush


def test_recorder_sigkilled_at_file_steps_leaves_tables_in_step(tmp_path):
    """Recorder sigkilled at file steps leaves tables in step."""
    sigkill_recorder(tmp_path, KILLS)


@pytest.mark.slow
def test_recorder_sigkilled_at_every_file_step_leaves_tables_in_step(tmp_path):
    """Recorder sigkilled at every file step leaves tables in step."""
    sigkill_recorder(tmp_path, SLOW_KILLS)
