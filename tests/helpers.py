"""Plain helpers shared by the test modules: recordings, archive builders, damage, filesystems.

Fixtures live in conftest.py; test modules import functions from here, never from each other.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import math
import multiprocessing
import os
import shutil
import signal
import threading
import time
import uuid as uuidlib
from pathlib import Path

import fsspec
import fsspec.implementations.memory
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from celery.events.state import State as CeleryState
from click.testing import CliRunner

import archiver
from archiver import maintenance
from archiver.cli import cli
from archiver.maintenance import recovery

HOUR = 3600.0
#: The sample was recorded on 2026-11-25 around 15:57 UTC; archives here start 3 days earlier.
SHIFT = -3 * 86400.0
#: Event times outside the partition range (1970..2261), and one far inside it.
YEAR_2100 = 4_102_444_800.0  # 2100-01-01
YEAR_702 = -40_683_000_000.0  # 702-06-15
YEAR_2300 = 10_413_792_000.0  # 2300-01-01
KEYS = {"tasks": "uuid", "workers": "hostname", "snapshots": "snapshot_id"}
DATA = Path(__file__).resolve().parent.parent / "data"


SAMPLE = DATA / "celery-events-sample.jsonl"


SMALL = DATA / "celery-events-small.jsonl"


def read_events(path: Path) -> list[dict]:
    """The events of a JSON-lines recording, blank lines skipped."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class FakeEntry:
    """A timer entry that records whether it was cancelled and can be fired by hand."""

    def __init__(self, secs: float, fun, args, kwargs) -> None:
        self.secs, self.fun, self.args, self.kwargs = secs, fun, args, kwargs
        self.cancelled = False
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.fun(*self.args, **self.kwargs)

    def cancel(self) -> None:
        self.cancelled = True


class FakeTimer:
    """Celery-compatible timer that never runs anything by itself."""

    def __init__(self) -> None:
        self.entries: list[FakeEntry] = []

    def call_repeatedly(self, secs, fun, *args, **kwargs):
        entry = FakeEntry(secs, fun, args, kwargs)
        self.entries.append(entry)
        return entry


def drive(state, camera, events, *, freq: float = 1.0, clock: list[float] | None = None) -> int:
    """Feed ``events`` to ``state``, capturing every ``freq`` seconds of event time.

    ``clock`` is a one-element list the camera's clock reads (``lambda: clock[0]``);
    returns the number of captures taken.
    """
    captures = 0
    now = clock if clock is not None else [events[0]["timestamp"]]
    next_shot = now[0] + freq
    for event in events:
        while event["timestamp"] >= next_shot:
            now[0] = next_shot
            camera.capture()
            captures += 1
            next_shot += freq
        state.event(dict(event))
    now[0] = next_shot
    return captures


def shifted_hours(events: list[dict], k: int) -> list[dict]:
    """A copy of ``events`` moved ``k`` hours later, with fresh task ids."""
    if k == 0:
        return [dict(e) for e in events]
    ns = uuidlib.UUID(int=k)

    def new(old):
        return None if old is None else str(uuidlib.uuid5(ns, old))

    out = []
    for event in events:
        e = dict(event)
        e["timestamp"] = e["timestamp"] + k * HOUR
        if "local_received" in e:
            e["local_received"] = e["local_received"] + k * HOUR
        for key in ("uuid", "root_id", "parent_id"):
            if key in e:
                e[key] = new(e[key])
        out.append(e)
    return out


def record_copies(path: Path, copies: list[list[dict]], *, state=None):
    """Replay each list of events through a State and the Parquet camera, snapshot per second.

    A final snapshot follows each list, so the archive ends with the state after it.
    """
    state = state if state is not None else archiver.State()
    clock = [copies[0][0]["timestamp"]]
    camera = archiver.ParquetCamera(state, path, timer=FakeTimer(), clock=lambda: clock[0])
    for events in copies:
        clock[0] = events[0]["timestamp"]
        drive(state, camera, events, clock=clock)
        camera.capture()
    camera.cancel()
    return state


def footer_rows(path: Path, table: str) -> int:
    """The rows of ``table`` as the Parquet footers count them."""
    return sum(pq.read_metadata(f).num_rows for f in (path / table).rglob("*.parquet"))


def shifted(events: list[dict], seconds: float, tag: str | None = None) -> list[dict]:
    """Copies of ``events`` moved by ``seconds``, task uuids suffixed with ``tag``."""
    out = []
    for event in events:
        e = dict(event)
        e["timestamp"] += seconds
        if "local_received" in e:
            e["local_received"] += seconds
        if tag is not None and "uuid" in e:
            e["uuid"] = f"{e['uuid']}-{tag}"
        out.append(e)
    return out


def record_small_files(path: Path, events: list[dict], *, flush_rows: int = 200) -> None:
    """Record ``events`` with a fresh State and ParquetCamera (many small files)."""
    clock = [events[0]["timestamp"]]
    state = archiver.State()
    camera = archiver.ParquetCamera(
        state, path, timer=FakeTimer(), clock=lambda: clock[0], flush_rows=flush_rows
    )
    drive(state, camera, events, clock=clock)
    camera.cancel()


def build_archive(
    path: Path, events: list[dict], *, hours: int, shift: float = SHIFT, same_uuids: bool = False
) -> Path:
    """One recording of the sample per hour for ``hours`` closed hours."""
    for k in range(hours):
        record_small_files(path, shifted(events, shift + k * HOUR, None if same_uuids else f"h{k}"))
    return path


def frame(archive: archiver.Archive, table: str) -> pd.DataFrame:
    """Every row of ``table``, plain dtypes, in a canonical order (for set comparison)."""
    df = archive.load(table)
    df = df.drop(columns=[c for c in ("date", "hour") if c in df.columns])
    for column in df.columns:
        if isinstance(df[column].dtype, pd.CategoricalDtype):
            df[column] = df[column].astype(object)
    order = ["captured_at", "snapshot_id", KEYS[table]]
    return df.sort_values(order, kind="stable").reset_index(drop=True)


def all_frames(archive: archiver.Archive) -> dict[str, pd.DataFrame]:
    return {t: frame(archive, t) for t in archive.tables()}


def assert_same_rows(before: dict[str, pd.DataFrame], archive: archiver.Archive) -> None:
    after = all_frames(archive)
    assert set(after) == set(before)
    for table, df in before.items():
        pd.testing.assert_frame_equal(after[table], df, obj=table)


def listing(root: Path) -> dict[str, int]:
    """Every file under ``root`` (relative path -> size), hidden ones included."""
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and p.name != "_archiver.lock"
    }


def visible_counts(archive: archiver.Archive) -> dict[tuple[str, str, int], int]:
    return {
        (t, p.date, p.hour): len(archive.partition_files(p))
        for t in archive.tables()
        for p in archive.partitions(t)
    }


def expected_expired(df: pd.DataFrame, per_state: dict[str, str], now: pd.Timestamp) -> set[str]:
    """uuids whose last row (by captured_at, snapshot_id) is older than its state's retention."""
    last = df.sort_values(["captured_at", "snapshot_id"], kind="stable").groupby("uuid").tail(1)
    limits = {s: pd.Timedelta(maintenance.parse_duration(d)) for s, d in per_state.items()}
    out = set()
    for row in last.itertuples():
        limit = limits.get(row.state)
        if limit is not None and now - row.captured_at > limit:
            out.add(row.uuid)
    return out


def damaged_copy_name(good: Path, tag: str) -> Path:
    return good.with_name(good.name.replace(".parquet", f"-{tag}.parquet"))


def first_file(path: Path, table: str = "tasks") -> Path:
    return sorted((path / table).rglob("*.parquet"))[0]


def truncated(path: Path) -> Path:
    good = first_file(path)
    bad = damaged_copy_name(good, "truncated")
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return bad


def not_parquet(path: Path) -> Path:
    bad = damaged_copy_name(first_file(path), "text")
    bad.write_text("this is not a Parquet file\n" * 50)
    return bad


def bit_flip(path: Path) -> Path:
    """A copy with one bit flipped inside a data page: only the page checksum tells."""
    good = first_file(path)
    meta = pq.read_metadata(good)
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    col = meta.row_group(0).column(names.index("uuid"))
    data = bytearray(good.read_bytes())
    data[col.data_page_offset + col.total_compressed_size - 8] ^= 0x10
    bad = damaged_copy_name(good, "bitflip")
    bad.write_bytes(bytes(data))
    return bad


def invoke(*args) -> object:
    """Run the CLI with ``args`` (stringified), catching exceptions as click does."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def visible_files(root) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


def assert_no_hidden_files(root) -> None:
    hidden = [p for p in visible_files(root) if os.path.basename(p).startswith((".", "_"))]
    assert hidden == []


class _FailingWriter:
    """A file object that accepts a few bytes, then fails like a full disk."""

    def __init__(self, inner, after: int = 64) -> None:
        self.inner, self.left = inner, after
        self.closed = False

    def write(self, data) -> int:
        if len(data) > self.left:
            self.inner.write(bytes(data[: self.left]))
            self.left = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.left -= len(data)
        return self.inner.write(data)

    def close(self) -> None:
        self.closed = True
        self.inner.close()

    def __getattr__(self, name):
        return getattr(self.inner, name)


class FlakyHandler(pafs.FSSpecHandler):
    """A filesystem that fails on demand: ``fail`` is None, "open", "write" or "move"."""

    def __init__(self, fs=None) -> None:
        super().__init__(fs or fsspec.filesystem("file"))
        self.fail: str | None = None
        self.block: threading.Event | None = None
        self.opened = 0

    def open_output_stream(self, path, metadata):
        self.opened += 1
        if self.block is not None:
            self.block.wait(10)
        if self.fail == "open":
            raise PermissionError(errno.EACCES, "Permission denied", path)
        if self.fail == "write":
            return pa.PythonFile(_FailingWriter(self.fs.open(path, "wb")), mode="w")
        return super().open_output_stream(path, metadata)

    def move(self, src, dest):
        if self.fail == "move":
            raise OSError(errno.EIO, "Input/output error", src)
        return super().move(src, dest)


class ObjectStore(fsspec.implementations.memory.MemoryFileSystem):
    """An in-memory filesystem that calls itself s3: moves would be copies."""

    protocol = ("s3", "s3a")
    moves = 0

    def mv(self, *args, **kwargs):
        type(self).moves += 1
        return super().mv(*args, **kwargs)


class _NoHeap(list):
    """A task heap that keeps nothing (see :func:`celery_state`)."""

    def append(self, item) -> None:
        pass

    def insert(self, index, item) -> None:
        pass


def celery_state(**kwargs) -> CeleryState:
    """Celery's State without its time-ordered task heap, the oracle for odd values.

    The heap (``tasks_by_time``) compares ``(clock, timestamp)`` of different events, so
    a string clock raises there depending on what came before; everything else Celery
    does with an event is kept.
    """
    return CeleryState(taskheap=_NoHeap(), **kwargs)


# -- the crash machinery: cleanups in real child processes, killed on purpose --------
CTX = multiprocessing.get_context("forkserver")
CTX.set_forkserver_preload(["archiver.maintenance", "tests.helpers"])


def _run(path: str, operation: str, kwargs: dict, kill_at: int | None, ready) -> None:
    """Child: run ``cleanup.<operation>``; with ``kill_at``, SIGKILL itself at that step."""
    if kill_at is not None:
        steps = itertools.count(1)

        def hook(step: str) -> None:
            if next(steps) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        recovery._STEP_HOOK = hook
    ready.set()
    getattr(maintenance, operation)(path, **kwargs)


def run_child(
    path: Path,
    operation: str,
    kwargs: dict,
    *,
    delay: float | None = None,
    kill_at: int | None = None,
) -> tuple[int, float]:
    """Run one cleanup in a child process, maybe SIGKILL it; (exit code, seconds it ran)."""
    ready = CTX.Event()
    proc = CTX.Process(target=_run, args=(str(path), operation, kwargs, kill_at, ready))
    proc.start()
    try:
        assert ready.wait(60), "the child did not start"
        started = time.perf_counter()
        if delay is not None:
            time.sleep(delay)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        proc.join(120)
        return proc.exitcode, time.perf_counter() - started
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()


def fingerprints(path: Path) -> dict[str, np.ndarray]:
    """A sorted hash per visible row of each table, read through ``Archive.load``."""
    arch = archiver.Archive(path)
    out = {}
    for table, key in KEYS.items():
        df = arch.load(table, columns=["captured_at", "snapshot_id", key])
        df[key] = df[key].astype(object)
        out[table] = np.sort(pd.util.hash_pandas_object(df, index=False).to_numpy())
    return out


# -- Celery's State as the oracle of the latest task rows -----------------------------
REF_TIME_FIELDS = ("sent", "received", "started", "succeeded", "failed", "retried", "revoked")
REF_FIELDS = (
    "state",
    "name",
    "worker",
    "retries",
    "result",
    "exception",
    "timestamp",
    *REF_TIME_FIELDS,
)


def micros_or_none(value):
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.value // 1000
    return round(value * 1e6)


def reference(events, **options) -> dict[str, tuple]:
    """Celery's own State fed ``events``: the latest state of every task."""
    state = CeleryState(**options)
    for event in events:
        state.event(dict(event))
    out = {}
    for uuid, task in state.tasks.items():
        row = {f: getattr(task, f) for f in REF_FIELDS}
        row["worker"] = task.worker.hostname if task.worker is not None else None
        out[uuid] = normalise_row(row)
    return out


def normalise_row(row) -> tuple:
    values = []
    for f in REF_FIELDS:
        v = row[f]
        if f == "timestamp" or f in REF_TIME_FIELDS:
            v = micros_or_none(v)
        elif v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            v = None
        elif f == "retries" and v is not None:
            v = int(v)
        values.append(v)
    return tuple(values)


def copy_archive(template: Path, target: str, server) -> str:
    """Copy a local archive to ``target``: a folder, or an s3:// URI on the test server."""
    if target.startswith("s3://"):
        fs = server.s3fs()
        bucket_path = target.split("://", 1)[1].split("?", 1)[0].split("@", 1)[-1]
        for file in template.rglob("*.parquet"):
            fs.put_file(str(file), f"{bucket_path}/{file.relative_to(template)}")
    else:
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(template, target)
    return target
