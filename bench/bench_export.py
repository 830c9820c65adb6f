"""Export benchmark: ``archiver query tasks --format csv`` against DuckDB's ``COPY ... TO``.

Generates a task archive of 1M rows (``bench_query.generate``: the archive's schema
and layout, zstd, 64 Ki-row groups), then runs side by side, alternating, in one run:

* ``archiver query tasks --archive A --format csv -o out.csv`` (the installed CLI, a
  fresh process each time);
* DuckDB's ``COPY (SELECT * FROM read_parquet([...files])) TO 'out.csv'`` of the same
  files, also in a fresh Python process;
* optionally (``--baseline-src DIR``) the same archiver command run from another
  checkout of the package (e.g. ``git archive main archiver | tar -x -C DIR``): "before".

Each command runs under a small fresh wrapper process that reports its wall time and
its peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss``: the wrapper is small, so the
value inherited across ``exec`` is not the one reported). Times are medians.
Goal: archiver's time <= 1.5x DuckDB's, peak RSS <= 500 MB.

Usage: python bench/bench_export.py [--rows 1000000] [--partitions 8] [--repeat 3]
                                    [--keep DIR] [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_query import generate  # noqa: E402

_WRAPPER = """
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
elapsed = time.perf_counter() - t0
if proc.returncode:
    sys.exit(proc.stderr.decode(errors="replace"))
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = usage.ru_utime + usage.ru_stime
print(json.dumps({"seconds": elapsed, "cpu": cpu, "peak_mb": usage.ru_maxrss / 1024}))
"""

_DUCKDB = """
import sys, duckdb
files, out = sys.argv[1:-1], sys.argv[-1]
con = duckdb.connect()
sql = "COPY (SELECT * FROM read_parquet(?)) TO '" + out + "' (HEADER, DELIMITER ',')"
con.execute(sql, [files])
"""


def measure(cmd: list[str], env: dict[str, str], cwd: str) -> dict[str, float]:
    """Wall time, CPU time and peak RSS (MiB) of ``cmd`` run under a fresh, small wrapper.

    ``cwd`` is outside any checkout: ``python -m`` puts it first on ``sys.path``.
    """
    out = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *cmd],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", help="generate into (or reuse) this directory")
    parser.add_argument("--baseline-src", help="another checkout's root (holding archiver/)")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench-export-")
    root = Path(args.keep) if args.keep else Path(tmp) / "archive"
    try:
        if not (root / "tasks").exists():
            t0 = time.perf_counter()
            rows, size = generate(root, args.rows, args.partitions)
            print(
                f"generated {rows:,} task rows in {args.partitions} hourly partitions, "
                f"{size / 2**20:.0f} MiB, in {time.perf_counter() - t0:.0f} s ({root})"
            )
        files = sorted(str(p) for p in (root / "tasks").rglob("*.parquet"))
        out = str(Path(tmp) / "out.csv")
        query = ["-m", "archiver", "query", "tasks", "--archive", str(root)]
        query += ["--format", "csv", "-o", out]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        cases: dict[str, tuple[list[str], dict[str, str]]] = {
            "archiver csv": ([sys.executable, *query], env),
            "duckdb COPY csv": ([sys.executable, "-c", _DUCKDB, *files, out], env),
        }
        if args.baseline_src:
            before = dict(os.environ, PYTHONPATH=str(Path(args.baseline_src).resolve()))
            cases["archiver csv (baseline)"] = ([sys.executable, *query], before)
        for cmd, case_env in cases.values():  # warm the page cache
            measure(cmd, case_env, tmp)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
        for _ in range(args.repeat):
            for name, (cmd, case_env) in cases.items():  # alternate: noise hits all alike
                results[name].append(measure(cmd, case_env, tmp))

        def seconds(name: str, key: str = "seconds") -> float:
            return statistics.median(r[key] for r in results[name])

        def peak(name: str) -> float:
            return max(r["peak_mb"] for r in results[name])

        print()
        header = f"{'case':28} {'median s':>9} {'CPU s':>7} {'peak RSS MiB':>13}"
        print(header)
        print("-" * len(header))
        for name in cases:
            print(
                f"{name:28} {seconds(name):>9.2f} {seconds(name, 'cpu'):>7.2f} {peak(name):>13.0f}"
            )
        ratio = seconds("archiver csv") / seconds("duckdb COPY csv")
        print()
        met = "met" if ratio <= 1.5 else "MISSED"
        print(f"archiver / duckdb time: {ratio:.2f}x (goal <= 1.5x: {met})")
        mb = peak("archiver csv")
        print(
            f"archiver peak RSS: {mb:.0f} MiB (goal <= 500 MB: {'met' if mb <= 500 else 'MISSED'})"
        )
        if args.baseline_src:
            base = "archiver csv (baseline)"
            print(
                f"baseline / now time: {seconds(base) / seconds('archiver csv'):.1f}x, "
                f"peak RSS {peak(base):.0f} -> {mb:.0f} MiB"
            )
        print(
            f"(medians of {args.repeat} alternating warm runs, each a fresh process; "
            "CPU = user + sys)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
