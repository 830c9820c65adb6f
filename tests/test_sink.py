"""ParquetSink: buffering, hive partitions, atomic files, failures and the buffer bound."""

from __future__ import annotations

import errno
import os
import threading
import time
import uuid as uuidlib
from datetime import datetime, timezone

import fsspec
import fsspec.implementations.memory
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from archiver import State
from archiver import schema as S
from archiver.convert import CeleryConverter
from archiver.sink import ParquetSink
from archiver.storage import resolve

from .helpers import FlakyHandler, ObjectStore, assert_no_hidden_files, visible_files

SCHEMAS = CeleryConverter.schemas
SNAP = SCHEMAS["snapshots"]


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def snapshot_rows(times: list[float], start: int = 0) -> pa.RecordBatch:
    """Rows of the small ``snapshots`` table at the given epoch times."""
    n = len(times)
    data = {f.name: [0] * n for f in SNAP}
    data["captured_at"] = [datetime.fromtimestamp(t, tz=timezone.utc) for t in times]
    data["snapshot_id"] = [f"s{start + i:06d}" for i in range(n)]
    data["event_count"] = list(range(start, start + n))
    return pa.RecordBatch.from_pydict(data, schema=SNAP)


def read_event_counts(root, table: str = "snapshots") -> list[int]:
    data = ds.dataset(os.path.join(root, table), partitioning="hive").to_table()
    return sorted(data.column("event_count").to_pylist())


def flaky(tmp_path):
    handler = FlakyHandler()
    return handler, resolve(str(tmp_path), pafs.PyFileSystem(handler))


# -- layout -------------------------------------------------------------------------------


def test_flush_splits_rows_by_utc_hour_and_sorts_each_file(tmp_path):
    """Rows across midnight go to two dates; each file is sorted by captured_at."""
    sink = ParquetSink(tmp_path, SCHEMAS)
    times = [ts("2026-11-25T23:59:59"), ts("2026-11-25T23:00:00"), ts("2026-11-26T00:00:01")]
    sink.append("snapshots", snapshot_rows(times[:2]))
    sink.append("snapshots", snapshot_rows(times[2:], start=2))
    sink.append("snapshots", snapshot_rows([ts("2026-11-25T23:30:00")], start=3))
    paths = sink.flush()
    assert len(paths) == 2
    dirs = sorted(os.path.relpath(os.path.dirname(p), tmp_path) for p in paths)
    assert dirs == ["snapshots/date=2026-11-25/hour=23", "snapshots/date=2026-11-26/hour=0"]
    for path in paths:
        stamps = pq.read_table(path).column("captured_at").to_pylist()
        assert stamps == sorted(stamps)
    first = pq.read_table(min(paths)).column("event_count").to_pylist()
    assert first == [1, 3, 0]  # 23:00, 23:30, 23:59:59
    assert_no_hidden_files(tmp_path)
    assert sink.buffered_rows == 0
    assert sink.stats.rows_written == 4
    assert sink.stats.files_written == 2
    assert sink.stats.bytes_written == sum(os.path.getsize(p) for p in paths)


def test_files_carry_schema_metadata_statistics_and_dictionaries(tmp_path):
    """Files carry schema metadata statistics and dictionaries."""
    sink = ParquetSink(tmp_path, SCHEMAS, row_group_size=3)
    state = State()
    for i in range(7):
        state.event(
            {
                "type": "task-sent",
                "uuid": f"u{i}",
                "hostname": "c",
                "timestamp": 1.0 + i,
                "local_received": 1.0,
                "clock": i,
                "name": "t.x",
            }
        )
    tasks, _ = state.take_changes()
    sink.append("tasks", CeleryConverter().task_batch(tasks, ts("2026-01-01T05:00:00"), "s"))
    (path,) = sink.flush()
    meta = pq.read_metadata(path)
    kv = meta.metadata
    assert kv[b"archiver.table"] == b"tasks"
    assert kv[b"archiver.schema_version"] == str(S.SCHEMA_VERSION).encode()
    assert kv[b"archiver.version"]
    assert meta.num_row_groups == 3

    def encodings(name: str) -> tuple:
        return meta.row_group(0).column(meta.schema.names.index(name)).encodings

    # dictionaries where values repeat (categories, args...), none on unique values
    assert "RLE_DICTIONARY" in encodings("name")
    assert "RLE_DICTIONARY" in encodings("args")
    assert "RLE_DICTIONARY" not in encodings("uuid")
    assert "RLE_DICTIONARY" not in encodings("sent")
    column = meta.row_group(0).column(meta.schema.names.index("name"))
    assert column.compression == "ZSTD"
    assert column.statistics is not None and column.statistics.has_min_max
    read = pq.read_table(path)
    assert pa.types.is_dictionary(read.schema.field("state").type)
    assert read.schema.field("sent").type == pa.timestamp("us", tz="UTC")


def test_batches_are_conformed_to_the_table_schema(tmp_path):
    """A batch without the metadata, or with plain strings, is cast to the schema."""
    sink = ParquetSink(tmp_path, SCHEMAS)
    plain = snapshot_rows([ts("2026-01-01T00:00:00")])
    sink.append("snapshots", plain.replace_schema_metadata(None))
    sink.append("snapshots", pa.Table.from_batches([snapshot_rows([ts("2026-01-01T00:00:01")])]))
    with pytest.raises(KeyError, match="unknown table"):
        sink.append("nope", plain)
    (path,) = sink.flush()
    assert pq.read_metadata(path).metadata[b"archiver.table"] == b"snapshots"
    assert pq.read_metadata(path).num_rows == 2


def test_file_names_are_unique_per_writer(tmp_path):
    """Two sinks (two cameras, two processes) writing the same hour never collide."""
    a, b = ParquetSink(tmp_path, SCHEMAS), ParquetSink(tmp_path, SCHEMAS)
    t = ts("2026-01-01T10:00:00")
    for sink in (a, b, a, b):
        sink.append("snapshots", snapshot_rows([t]))
        sink.flush()
    names = visible_files(tmp_path)
    assert len(names) == len(set(names)) == 4
    assert a.writer_id != b.writer_id
    assert sum(a.writer_id in n for n in names) == 2


# -- when to flush ------------------------------------------------------------------------
def test_due_by_rows_and_by_age(tmp_path):
    """Due by rows and by age."""
    now = [0.0]
    sink = ParquetSink(tmp_path, SCHEMAS, flush_rows=3, flush_interval=10, clock=lambda: now[0])
    assert not sink.due()
    sink.append("snapshots", snapshot_rows([1.0, 2.0]))
    assert not sink.due()
    sink.append("snapshots", snapshot_rows([3.0]))
    assert sink.due()
    sink.flush()
    sink.append("snapshots", snapshot_rows([4.0]))
    now[0] = 9.9
    assert not sink.due()
    now[0] = 10.0
    assert sink.due()


def test_invalid_settings_are_rejected(tmp_path):
    """Inconsistent flush_rows/max_buffer_rows and a zero flush_interval raise ValueError."""
    with pytest.raises(ValueError, match="flush_rows"):
        ParquetSink(tmp_path, SCHEMAS, flush_rows=10, max_buffer_rows=5)
    with pytest.raises(ValueError, match="flush_interval"):
        ParquetSink(tmp_path, SCHEMAS, flush_interval=0)
    with pytest.raises(ValueError, match="captured_at"):
        ParquetSink(tmp_path, {"x": pa.schema([("a", pa.int64())])})


# -- failures -----------------------------------------------------------------------------
@pytest.mark.parametrize("failure", ["open", "write", "move"])
def test_a_failed_write_keeps_the_rows_and_retries_later(tmp_path, failure, caplog):
    """Permission denied, disk full mid-file, or a failed rename: logged, nothing
    visible, rows kept; the retry waits a growing delay and then writes them."""
    handler, location = flaky(tmp_path)
    now = [100.0]
    sink = ParquetSink(location, SCHEMAS, flush_rows=2, flush_interval=30, clock=lambda: now[0])
    handler.fail = failure
    sink.append("snapshots", snapshot_rows([ts("2026-01-01T00:00:00"), ts("2026-01-01T01:00:00")]))
    assert sink.due()
    assert sink.flush() == []
    assert sink.stats.write_errors == 1
    assert "kept in memory, will retry" in caplog.text
    assert sink.buffered_rows == 2
    assert visible_files(tmp_path) == []  # not even a temporary file
    assert not sink.due()  # backing off
    now[0] += 1.0
    assert sink.due()
    assert sink.flush() == []  # still failing: the delay doubles
    now[0] += 1.0
    assert not sink.due()
    now[0] += 1.0
    handler.fail = None
    assert sink.due()
    assert len(sink.flush()) == 2
    assert read_event_counts(tmp_path) == [0, 1]
    assert sink.stats.rows_written == 2 and sink.stats.rows_dropped == 0
    assert_no_hidden_files(tmp_path)
    sink.append("snapshots", snapshot_rows([ts("2026-01-01T02:00:00")]))
    assert not sink.due()  # the backoff is reset after a success
    now[0] += 30
    assert sink.due()


def test_a_partial_failure_keeps_only_what_was_not_written(tmp_path):
    """When the second hour's file fails, the first hour's file stays and is not rewritten."""
    handler, location = flaky(tmp_path)
    sink = ParquetSink(location, SCHEMAS)
    sink.append("snapshots", snapshot_rows([ts("2026-01-01T00:00:00"), ts("2026-01-01T01:00:00")]))
    real = handler.open_output_stream

    def second_fails(path, metadata):
        if "hour=1" in path:
            raise OSError(errno.EIO, "I/O error")
        return real(path, metadata)

    handler.open_output_stream = second_fails
    assert len(sink.flush()) == 1
    assert sink.buffered_rows == 1
    handler.open_output_stream = real
    assert len(sink.flush()) == 1
    assert read_event_counts(tmp_path) == [0, 1]


def test_past_the_bound_the_oldest_rows_are_dropped_and_counted(tmp_path, caplog):
    """Past the bound the oldest rows are dropped and counted."""
    handler, location = flaky(tmp_path)
    sink = ParquetSink(location, SCHEMAS, flush_rows=2, max_buffer_rows=5)
    handler.fail = "open"
    base = ts("2026-01-01T00:00:00")
    for i in range(4):
        sink.append("snapshots", snapshot_rows([base + 2 * i, base + 2 * i + 1], start=2 * i))
        sink.flush()
    assert sink.buffered_rows == 5
    assert sink.stats.rows_dropped == 3
    assert "dropped the oldest rows" in caplog.text
    handler.fail = None
    sink.flush()
    assert read_event_counts(tmp_path) == [3, 4, 5, 6, 7]
    assert sink.stats.rows_written + sink.stats.rows_dropped == sink.stats.rows_buffered


def test_append_does_not_wait_for_a_write_in_progress(tmp_path):
    """The camera appends under the state's lock: it must never block on I/O."""
    handler, location = flaky(tmp_path)
    sink = ParquetSink(location, SCHEMAS)
    sink.append("snapshots", snapshot_rows([ts("2026-01-01T00:00:00")]))
    handler.block = threading.Event()
    writer = threading.Thread(target=sink.flush)
    writer.start()
    try:
        deadline = time.monotonic() + 5
        while handler.opened == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        started = time.monotonic()
        sink.append("snapshots", snapshot_rows([ts("2026-01-01T00:00:01")], start=1))
        assert time.monotonic() - started < 0.5
        assert sink.buffered_rows == 1
    finally:
        handler.block.set()
        writer.join(10)
    handler.block = None
    sink.flush()
    assert read_event_counts(tmp_path) == [0, 1]


def test_recent_file_list_is_bounded(tmp_path, monkeypatch):
    """Recent file list is bounded."""
    monkeypatch.setattr("archiver.sink.RECENT_FILES", 2)
    sink = ParquetSink(tmp_path, SCHEMAS)
    for i in range(4):
        sink.append("snapshots", snapshot_rows([ts("2026-01-01T00:00:00") + i], start=i))
        sink.flush()
    assert sink.stats.files_written == 4
    assert len(sink.stats.files) == 2


# -- other filesystems --------------------------------------------------------------------
def test_memory_filesystem_through_fsspec():
    """The sink writes readable files to a memory:// filesystem."""
    root = f"memory://archiver-test-{uuidlib.uuid4().hex}"
    location = resolve(root)
    try:
        sink = ParquetSink(location, SCHEMAS)
        sink.append("snapshots", snapshot_rows([ts("2026-01-01T00:00:00")]))
        (path,) = sink.flush()
        infos = location.fs.get_file_info(pafs.FileSelector(location.root, recursive=True))
        names = [i.base_name for i in infos if i.type == pafs.FileType.File]
        assert names == [os.path.basename(path)]
        data = ds.dataset(
            location.join("snapshots"), filesystem=location.fs, partitioning="hive"
        ).to_table()
        assert data.num_rows == 1
        assert data.column("hour").to_pylist() == [0]
    finally:
        fsspec.filesystem("memory").rm(location.root, recursive=True)


def test_fsspec_filesystem_object_is_accepted(tmp_path):
    """Fsspec filesystem object is accepted."""
    location = resolve(str(tmp_path), fsspec.filesystem("file"))
    assert isinstance(location.fs, pafs.PyFileSystem)
    assert location.atomic_rename
    sink = ParquetSink(location, SCHEMAS)
    sink.append("snapshots", snapshot_rows([ts("2026-01-01T00:00:00")]))
    sink.flush()
    assert read_event_counts(tmp_path) == [0]


def test_file_uri(tmp_path):
    """A file:// URI is a local archive the sink writes to."""
    location = resolve(tmp_path.as_uri())
    assert location.local and location.root == str(tmp_path)
    sink = ParquetSink(location, SCHEMAS)
    sink.append("snapshots", snapshot_rows([ts("2026-01-01T00:00:00")]))
    sink.flush()
    assert read_event_counts(tmp_path) == [0]


def test_object_stores_get_the_final_name_directly():
    """On an object store an upload appears only once complete, and a rename is a
    copy: no temporary file there."""
    fs = ObjectStore()
    root = f"/archiver-s3-{uuidlib.uuid4().hex}"
    location = resolve(root, fs)
    assert not location.atomic_rename
    try:
        sink = ParquetSink(location, SCHEMAS)
        sink.append("snapshots", snapshot_rows([ts("2026-01-01T00:00:00")]))
        (path,) = sink.flush()
        assert ObjectStore.moves == 0
        assert fs.exists(path)
    finally:
        fs.rm(root, recursive=True)
