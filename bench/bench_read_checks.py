"""What verifying files costs a read: this tree's archiver against another tree's (a baseline).

Readers now check each file's footer and schema (cached per process) and verify Parquet
page checksums. This generates the query benchmark's archive (bench_query.py) with page
checksums, then times, each in a fresh process (so the footer cache starts empty), a
cold ``load`` of the whole table, then a warm one, and ``latest()``, for both trees,
alternating runs. Ratios are this tree / the baseline, medians of ``--runs`` runs.

Usage: python bench/bench_read_checks.py --baseline DIR [--rows 2000000] [--partitions 48]
(DIR: a checkout of the baseline, e.g. ``git archive main | tar -x -C DIR``).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

CHILD = """
import sys, time, json
sys.path.insert(0, sys.argv[1])
import archiver
a = archiver.Archive(sys.argv[2])
out = {}
t = time.perf_counter(); n = len(a.load("tasks")); out["load_cold"] = time.perf_counter() - t
t = time.perf_counter(); a.load("tasks"); out["load_warm"] = time.perf_counter() - t
t = time.perf_counter(); a.latest("tasks"); out["latest"] = time.perf_counter() - t
out["rows"] = n
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--partitions", type=int, default=48)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    import bench_query

    bench_query.pq.write_table = functools.partial(pq.write_table, write_page_checksum=True)
    with tempfile.TemporaryDirectory() as tmp:
        rows, size = bench_query.generate(Path(tmp), args.rows, args.partitions)
        print(f"archive: {rows:,} rows, {size / 2**20:.0f} MiB, {args.partitions} files")
        results: dict[str, list[dict]] = {"this": [], "baseline": []}
        for _ in range(args.runs):
            for name, tree in (("this", str(ROOT)), ("baseline", args.baseline)):
                cmd = [sys.executable, "-c", CHILD, tree, tmp]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                results[name].append(json.loads(out.strip().splitlines()[-1]))
    for case in ("load_cold", "load_warm", "latest"):
        this = statistics.median(r[case] for r in results["this"])
        base = statistics.median(r[case] for r in results["baseline"])
        print(f"{case:10s} this {this:.3f}s  baseline {base:.3f}s  ratio {this / base:.2f}")


if __name__ == "__main__":
    main()
