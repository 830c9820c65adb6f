"""Compaction throughput against the raw pyarrow floor, and loading a day before/after.

Builds a day of history (24 closed hours) from the recorded sample events as
hundreds of small files per table, the way a recorder flushing every few
snapshots leaves them, then measures in one run:

* ``archiver.maintenance.compact`` (lock, listing, read, sort, write, rename, delete);
* the raw floor on the same files: pyarrow reading each hour's files and writing
  one file per hour (same codec and row groups), and reading all of a table's
  files and writing one file; the goal is compaction >= 0.8x the floor's rows/s;
* ``Archive.load("tasks")`` of the whole day from the uncompacted archive and
  from the compacted one.

Usage: ``python bench/bench_cleanup.py [--hours 24] [--copies 2] [--snapshots-per-file 3]``.
Times are medians of ``--repeat`` runs on a warm page cache.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import archiver  # noqa: E402
from archiver import maintenance  # noqa: E402
from archiver.layout import partition_path  # noqa: E402
from archiver.sink import ROW_GROUP_SIZE, write_file  # noqa: E402
from archiver.storage import resolve  # noqa: E402

SAMPLE = ROOT / "data" / "celery-events-sample.jsonl"
HOUR_US = 3_600_000_000


class _Timer:
    """A timer that never fires: the replay drives captures itself."""

    def call_repeatedly(self, secs, fun, *args, **kwargs):
        class Entry:
            def cancel(self) -> None:
                pass

        return Entry()


def record_sample(path: Path) -> dict[str, pa.Table]:
    """Replay the sample once (one capture per second) and return its tables."""
    with open(SAMPLE) as f:
        events = [json.loads(line) for line in f if line.strip()]
    clock = [events[0]["timestamp"]]
    state = archiver.State()
    camera = archiver.ParquetCamera(
        state, path, timer=_Timer(), clock=lambda: clock[0], flush_rows=10**6
    )
    next_shot = clock[0] + 1
    for event in events:
        while event["timestamp"] >= next_shot:
            clock[0] = next_shot
            camera.capture()
            next_shot += 1
        state.event(dict(event))
    clock[0] = next_shot
    camera.cancel()
    arch = archiver.Archive(path)
    out = {}
    for table in arch.tables():
        data = arch.read(table)
        out[table] = data.drop_columns([c for c in ("date", "hour") if c in data.column_names])
    return out


def shift(table: pa.Table, seconds: int, tag: str) -> pa.Table:
    """The rows moved by ``seconds``, with snapshot ids and task uuids made unique by ``tag``."""
    micros = pc.add(table.column("captured_at").cast(pa.int64()), seconds * 10**6)
    table = table.set_column(0, "captured_at", micros.cast(table.schema.field(0).type))
    for name in ("snapshot_id", "uuid"):
        if name in table.column_names:
            i = table.schema.get_field_index(name)
            table = table.set_column(i, name, pc.binary_join_element_wise(table[name], tag, "-"))
    return table


def build_day(path: Path, base: dict[str, pa.Table], *, hours: int, copies: int, per_file: int):
    """``hours`` closed hours of ``copies`` replays each, one file per ``per_file`` snapshots."""
    location = resolve(path)
    start_us = int(base["snapshots"].column("captured_at").cast(pa.int64())[0].as_py())
    day0 = (start_us // HOUR_US // 24 - 3) * 24 * 3600  # three days before the sample, 00:00
    first = start_us // 10**6
    seq = 0
    for hour in range(hours):
        for copy in range(copies):
            offset = day0 + hour * 3600 + copy * (3600 // copies) - first + 60
            tag = f"h{hour}c{copy}"
            for name, table in base.items():
                shifted = shift(table, offset, tag)
                ids = shifted.column("snapshot_id").to_numpy(zero_copy_only=False)
                _, order = np.unique(ids, return_index=True)
                bounds = [*sorted(order.tolist()), shifted.num_rows]
                for lo_i in range(0, len(bounds) - 1, per_file):
                    lo, hi = bounds[lo_i], bounds[min(lo_i + per_file, len(bounds) - 1)]
                    part = shifted.slice(lo, hi - lo)
                    bucket = int(part.column("captured_at").cast(pa.int64())[0].as_py()) // HOUR_US
                    seq += 1
                    write_file(
                        location,
                        location.join(name, partition_path(bucket)),
                        f"part-bench-{seq:08d}.parquet",
                        part,
                    )


def median_time(fun: Callable[[], object], repeat: int, setup: Callable[[], object] | None = None):
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fun()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def raw_per_hour(src: Path, out: Path) -> None:
    """The floor: for each table and hour, read its files with pyarrow and write one file."""
    arch = archiver.Archive(src)
    for table in arch.tables():
        for part in arch.partitions(table):
            paths = [i.path for i in arch.partition_files(part)]
            data = ds.dataset(paths, format="parquet").to_table()
            target = out / table / f"{part.date}-{part.hour}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(data, target, compression="zstd", row_group_size=ROW_GROUP_SIZE)


def raw_one_file(src: Path, out: Path) -> None:
    """The literal floor: read all of a table's files, write one file."""
    arch = archiver.Archive(src)
    out.mkdir(parents=True, exist_ok=True)
    for table in arch.tables():
        data = ds.dataset(arch.files(table), format="parquet").to_table()
        pq.write_table(
            data, out / f"{table}.parquet", compression="zstd", row_group_size=ROW_GROUP_SIZE
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--copies", type=int, default=2, help="replays of the sample per hour")
    parser.add_argument("--snapshots-per-file", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-cleanup-"))
    try:
        base = record_sample(work / "sample")
        raw = work / "raw"
        t0 = time.perf_counter()
        build_day(raw, base, hours=args.hours, copies=args.copies, per_file=args.snapshots_per_file)
        built = time.perf_counter() - t0
        arch = archiver.Archive(raw)
        files = {t: len(arch.files(t)) for t in arch.tables()}
        rows = {t: arch.read(t, columns=["captured_at"]).num_rows for t in arch.tables()}
        raw_bytes = sum(p.stat().st_size for p in raw.rglob("*.parquet"))
        total_rows, total_files = sum(rows.values()), sum(files.values())
        print(
            f"# {args.hours} hours x {args.copies} replays of the sample: {total_files} files "
            f"({files['tasks']} of tasks), {total_rows:,} rows ({rows['tasks']:,} tasks), "
            f"{raw_bytes / 2**20:.1f} MiB; built in {built:.1f}s"
        )

        copy = work / "copy"

        def fresh() -> None:
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(raw, copy)

        floor_out = work / "floor"

        def clean_floor() -> None:
            shutil.rmtree(floor_out, ignore_errors=True)

        raw_per_hour(raw, floor_out)  # warm the page cache and the code paths
        clean_floor()
        # Interleaved, so that the load of a shared machine hits all three alike.
        runs: dict[str, list[float]] = {"compact": [], "hour": [], "one": []}
        for _ in range(args.repeat):
            runs["compact"].append(median_time(lambda: maintenance.compact(copy), 1, fresh))
            runs["hour"].append(median_time(lambda: raw_per_hour(raw, floor_out), 1, clean_floor))
            runs["one"].append(median_time(lambda: raw_one_file(raw, floor_out), 1, clean_floor))
        t_compact, t_floor_hour, t_floor_one = (statistics.median(v) for v in runs.values())
        ratios = [h / c for h, c in zip(runs["hour"], runs["compact"])]
        report = maintenance.compact(copy)  # the last fresh copy is compacted: a no-op check
        assert report.partitions == (), report
        compacted_files = sum(len(archiver.Archive(copy).files(t)) for t in files)
        compacted_bytes = sum(p.stat().st_size for p in copy.rglob("*.parquet"))

        raw_arch, compact_arch = archiver.Archive(raw), archiver.Archive(copy)
        n_raw, n_compact = len(raw_arch.load("tasks")), len(compact_arch.load("tasks"))
        assert n_raw == n_compact == rows["tasks"], (n_raw, n_compact)
        t_load_raw = median_time(lambda: raw_arch.load("tasks"), args.repeat)
        t_load_compact = median_time(lambda: compact_arch.load("tasks"), args.repeat)
        cols = ["captured_at", "uuid", "state"]
        t_cols_raw = median_time(lambda: raw_arch.load("tasks", columns=cols), args.repeat)
        t_cols_compact = median_time(lambda: compact_arch.load("tasks", columns=cols), args.repeat)

        def rate(seconds: float, n: int = total_rows) -> str:
            return f"{n / seconds / 1e6:.2f}"

        table = [
            ("case", "files in", "files out", "rows", "median s", "M rows/s", "vs floor"),
            ("archiver compact (all tables)", total_files, compacted_files, total_rows,
             f"{t_compact:.3f}", rate(t_compact), f"{t_floor_hour / t_compact:.2f}x"),
            ("floor: pyarrow read+write per hour", total_files, compacted_files, total_rows,
             f"{t_floor_hour:.3f}", rate(t_floor_hour), "1.00x"),
            ("floor: pyarrow read+write 1 per table", total_files, len(files), total_rows,
             f"{t_floor_one:.3f}", rate(t_floor_one), f"{t_floor_hour / t_floor_one:.2f}x"),
            ("load a day of tasks, uncompacted", files["tasks"], "", rows["tasks"],
             f"{t_load_raw:.3f}", rate(t_load_raw, rows["tasks"]), ""),
            ("load a day of tasks, compacted", len(compact_arch.files("tasks")), "",
             rows["tasks"], f"{t_load_compact:.3f}", rate(t_load_compact, rows["tasks"]),
             f"{t_load_raw / t_load_compact:.1f}x faster"),
            ("3 columns of a day, uncompacted", files["tasks"], "", rows["tasks"],
             f"{t_cols_raw:.3f}", rate(t_cols_raw, rows["tasks"]), ""),
            ("3 columns of a day, compacted", len(compact_arch.files("tasks")), "",
             rows["tasks"], f"{t_cols_compact:.3f}", rate(t_cols_compact, rows["tasks"]),
             f"{t_cols_raw / t_cols_compact:.1f}x faster"),
        ]  # fmt: skip
        widths = [max(len(str(r[i])) for r in table) for i in range(len(table[0]))]
        for n, row in enumerate(table):
            print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
            if n == 0:
                print("  ".join("-" * w for w in widths))
        print(
            f"# compaction: {raw_bytes / 2**20:.1f} -> {compacted_bytes / 2**20:.1f} MiB; "
            f"throughput vs the per-hour floor {t_floor_hour / t_compact:.2f}x (goal >= 0.8x; "
            f"per run: {', '.join(f'{r:.2f}x' for r in ratios)})"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
