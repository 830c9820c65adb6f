"""Report benchmark: ``archiver.report`` against ``Archive.load`` of the columns it needs.

Builds an archive of about 1M task rows by replaying the bundled sample once through
the recorder, then repeating its Parquet rows with fresh uuids, timestamps shifted by
30 s per copy and one recorder id per copy (so events add up), written in the
archive's hive layout. Then, in one process and alternating so that noise hits both
alike, it times (median of ``--repeat`` warm runs):

* **load**: ``Archive.load`` (Arrow) of exactly what the report reads: the task
  columns, the failed tasks' exception/traceback, the workers and snapshots columns;
* **report**: ``archiver.report(archive, output=...)``: the same reads, DuckDB
  aggregates, nine matplotlib charts (drawn by two processes) and the HTML page.

Goal: report <= 3x load (median wall time; each run's ratio is printed too, and the CPU
time of both, which a busy machine disturbs less). Peak RSS (``VmHWM``) of a fresh
process running the report once: goal < 1 GB.

Usage: python bench/bench_report.py [--rows 1000000] [--repeat 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from archiver import Archive, report  # noqa: E402
from archiver.record import Recorder  # noqa: E402
from archiver.schema import HOUR_US, SCHEMAS, with_metadata  # noqa: E402

SAMPLE = ROOT / "data" / "celery-events-sample.jsonl"
SHIFT_US = 30 * 10**6


def build(path: Path, rows: int) -> int:
    """An archive of about ``rows`` task rows, from copies of the recorded sample."""
    seed = path.parent / "seed"
    Recorder(str(seed), freq=1.0).replay_file(str(SAMPLE))
    seed_archive = Archive(seed)
    tables = {t: seed_archive.read(t, columns=list(SCHEMAS[t].names)) for t in SCHEMAS}
    copies = -(-rows // tables["tasks"].num_rows)
    written = 0
    for table_name, table in tables.items():
        schema = with_metadata(SCHEMAS[table_name], table_name)
        parts = []
        for k in range(copies):
            copy = table
            for i, field in enumerate(schema):
                if pa.types.is_timestamp(field.type):
                    shifted = pc.add(copy.column(i).cast(pa.int64()), k * SHIFT_US)
                    copy = copy.set_column(i, field, shifted.cast(field.type))
            if table_name == "tasks":
                uuid = pc.binary_join_element_wise(copy["uuid"], pa.scalar(f"-{k}"), "")
                copy = copy.set_column(schema.get_field_index("uuid"), schema.field("uuid"), uuid)
            ids = pc.binary_join_element_wise(
                pa.scalar(f"{k:012x}"), pc.utf8_slice_codeunits(copy["snapshot_id"], 12), ""
            )
            copy = copy.set_column(1, schema.field("snapshot_id"), ids)
            parts.append(copy)
        whole = pa.concat_tables(parts).combine_chunks()
        micros = whole["captured_at"].cast(pa.int64()).to_numpy()
        hours = micros // HOUR_US
        for hour in np.unique(hours):
            chunk = whole.filter(pa.array(hours == hour))
            day = time.strftime("%Y-%m-%d", time.gmtime(int(hour) * 3600))
            out = path / table_name / f"date={day}" / f"hour={int(hour) % 24}"
            out.mkdir(parents=True, exist_ok=True)
            pq.write_table(
                chunk.cast(schema), out / "bench.parquet", compression="zstd",
                row_group_size=65536,
            )  # fmt: skip
        if table_name == "tasks":
            written = whole.num_rows
    shutil.rmtree(seed)
    return written


def load_needed(archive: Archive) -> int:
    """What the report reads, with nothing else done."""
    state = pc.field("state").cast(pa.string()) == "FAILURE"
    tables = [
        archive.load("tasks", columns=report.TASK_COLUMNS, engine="arrow"),
        archive.load("tasks", columns=report.FAILURE_COLUMNS, filters=state, engine="arrow"),
        archive.load("workers", columns=report.WORKER_COLUMNS, engine="arrow"),
        archive.load("snapshots", columns=report.SNAPSHOT_COLUMNS, engine="arrow"),
    ]
    return sum(t.num_rows for t in tables)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the report's drawing child)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


PEAK = """
import json, sys
sys.path.insert(0, {root!r})
from archiver import report
report.report({archive!r}, output={output!r})
status = open("/proc/self/status").read()
print(json.dumps({{k: int(v.split()[0]) for k, v in
    (line.split(":", 1) for line in status.splitlines()) if k in ("VmHWM", "VmRSS")}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", help="build the archive here and keep it")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-report-"))
    path = Path(args.keep) if args.keep else tmp / "archive"
    try:
        if not (path / "tasks").is_dir():
            t = time.perf_counter()
            rows = build(path, args.rows)
            print(f"built {rows:,} task rows in {time.perf_counter() - t:.1f}s at {path}")
        archive = Archive(path)
        output = tmp / "report.html"
        load_needed(archive)
        report.report(archive, output=output)  # warm the page cache and imports
        loads, reports, gathers, cpu = [], [], [], {"load": [], "report": []}
        for _ in range(args.repeat):
            t, c = time.perf_counter(), cpu_seconds()
            load_needed(archive)
            loads.append(time.perf_counter() - t)
            cpu["load"].append(cpu_seconds() - c)
            t = time.perf_counter()
            report.gather(archive)
            gathers.append(time.perf_counter() - t)
            t, c = time.perf_counter(), cpu_seconds()
            report.report(archive, output=output)
            reports.append(time.perf_counter() - t)
            cpu["report"].append(cpu_seconds() - c)
        load, gather, full = (statistics.median(x) for x in (loads, gathers, reports))
        print(f"Archive.load of the needed columns: {load:.2f}s")
        print(f"report.gather (reads + DuckDB):     {gather:.2f}s  ({gather / load:.2f}x load)")
        print(f"archiver.report (page written):     {full:.2f}s  ({full / load:.2f}x load)")
        runs = ", ".join(f"{r / x:.2f}" for r, x in zip(reports, loads))
        print(f"  report / load, run by run: {runs}")
        cpu_load, cpu_full = (statistics.median(cpu[k]) for k in ("load", "report"))
        print(
            f"CPU (user + sys, all threads and processes): load {cpu_load:.2f}s, "
            f"report {cpu_full:.2f}s ({cpu_full / cpu_load:.2f}x)"
        )
        print(f"page: {output.stat().st_size / 1e6:.2f} MB")
        code = PEAK.format(root=str(ROOT), archive=str(path), output=str(output))
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if result.returncode:
            sys.exit(result.stderr)
        mem = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"report peak RSS: {mem['VmHWM'] / 1024:.0f} MiB (goal < 1024)")
        ok = full / load <= 3 and mem["VmHWM"] < 1024 * 1024
        print("OK" if ok else "GOAL MISSED")
        if not ok:
            sys.exit(1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
