"""End-to-end replay throughput of `archiver record`, and its peak memory on 1M events.

Throughput (one run, the same file for every line of the table, rounds interleaved, best
of ``--rounds``; in CPU seconds, which a busy shared machine disturbs far less than wall
time, with the wall time alongside):

* ``State alone``: ``archiver.State.event`` fed the events already parsed in memory (its
  changes taken every 2,048 events, as a camera would, so that they do not pile up);
* ``file -> State``: the same file read and parsed line by line (stdlib ``json``, the
  recorder's own reader) into ``archiver.State``: ingestion without any archiving;
* ``Recorder API``: ``Recorder(archive).replay_file(path)`` at ``--speed 0``: file ->
  State -> snapshots every second of event time -> Parquet (the default camera);
* ``CLI subprocess``: ``python -m archiver record --replay FILE --quiet``, for reference
  (it includes the interpreter's start-up and imports).

Goal: the Recorder runs at >= 0.7x the "State alone" rate (archiving costs less than 30%);
the ratio to "file -> State" is printed too (what archiving adds to ingesting a file).

Memory: ``python -m archiver record --replay`` of 1M events (``--max-tasks 10000``) in a
subprocess; its ``ru_maxrss`` must stay under 300 MB.

The events are the recorded sample (``data/celery-events-sample.jsonl``) repeated with
fresh task ids and timestamps shifted forward each time, like a cluster that keeps
running; they are written to a temporary directory, removed at the end.

Usage: ``.venv/bin/python bench/bench_record.py [--events N] [--big-events N] [--rounds R]``
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from archiver import State  # noqa: E402
from archiver.record import Recorder  # noqa: E402
from archiver.sources import LineStats, read_events  # noqa: E402

SAMPLE = ROOT / "data" / "celery-events-sample.jsonl"
GOAL_RATIO = 0.7
GOAL_RSS_MB = 300


def load(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_events(path: Path, n: int) -> int:
    """The sample repeated until ``n`` events: new ids, later clocks and timestamps."""
    template = load(SAMPLE)
    stamps = [e["timestamp"] for e in template]
    time_step = max(stamps) - min(stamps) + 1.0
    clock_step = max(e["clock"] for e in template) + 1
    written = 0
    with open(path, "w", encoding="utf-8") as out:
        rep = 0
        while written < n:
            ids: dict[str, str] = {}
            lines = []
            for e in template[: n - written]:
                d = dict(e)
                d["timestamp"] += rep * time_step
                d["local_received"] += rep * time_step
                d["clock"] += rep * clock_step
                for key in ("uuid", "root_id", "parent_id"):
                    old = d.get(key)
                    if old:
                        d[key] = ids.setdefault(old, str(uuid.uuid4()))
                lines.append(json.dumps(d, ensure_ascii=False))
            out.write("\n".join(lines) + "\n")
            written += len(lines)
            rep += 1
    return written


LAUNCHER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({
    "seconds": time.perf_counter() - start,
    "maxrss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    "cpu": resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
    + resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime,
    "rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr,
}))
"""


def run_cli(args: list[str]) -> tuple[float, float, int, str]:
    """Wall and CPU seconds, peak RSS (bytes) and stdout of ``python -m archiver ARGS``.

    Run from a small launcher process: a child forked from this (big) process would
    report this process's peak as its own ``ru_maxrss``.
    """
    cmd = [sys.executable, "-m", "archiver", *args]
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *cmd], cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"launcher failed:\n{done.stderr}")
    result = json.loads(done.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"archiver failed ({result['rc']}):\n{result['stderr']}")
    if result["stderr"].strip():
        print(f"(archiver's stderr: {result['stderr'].strip()[:500]})")
    return result["seconds"], result["cpu"], result["maxrss"], result["stdout"].strip()


def main() -> int:
    logging.disable(logging.WARNING)  # a State without a camera warns about held changes
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events for throughput")
    parser.add_argument("--big-events", type=int, default=1_000_000, help="events for memory")
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-record-"))
    try:
        path = tmp / "events.jsonl"
        n = write_events(path, opts.events)
        size_mb = path.stat().st_size / 1e6
        print(
            f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs; "
            f"{n:,} events ({size_mb:.0f} MB), best of {opts.rounds}\n"
        )
        events = load(path)
        drain_every = 2048

        def state_alone() -> tuple[float, float]:
            copies = [dict(e) for e in events]  # State may keep the dicts: fresh copies
            gc.collect()
            state = State()
            feed, take = state.event, state.take_changes
            t0, c0 = time.perf_counter(), time.process_time()
            for i, e in enumerate(copies):
                feed(e)
                if not i % drain_every:
                    take()  # as a camera would: the changes do not pile up
            return time.perf_counter() - t0, time.process_time() - c0

        def file_to_state() -> tuple[float, float]:  # the recorder's own reader, no camera
            gc.collect()
            state = State()
            feed, take = state.event, state.take_changes
            t0, c0 = time.perf_counter(), time.process_time()
            with open(path, "rb") as f:
                for i, event in enumerate(read_events(f, LineStats())):
                    feed(event)
                    if not i % drain_every:
                        take()
            return time.perf_counter() - t0, time.process_time() - c0

        summaries = []

        def recorder_api() -> tuple[float, float]:
            archive = tmp / f"archive-{len(summaries)}"
            gc.collect()
            t0, c0 = time.perf_counter(), time.process_time()
            summaries.append(Recorder(str(archive)).replay_file(str(path)))
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            shutil.rmtree(archive)
            return wall, cpu

        # Interleaved rounds, so that every path sees the same load on the machine; the
        # best of each. CPU time is the fairer measure on a shared machine.
        paths = {"state": state_alone, "ingest": file_to_state, "recorder": recorder_api}
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in paths}
        for _ in range(opts.rounds):
            for key, fun in paths.items():
                runs[key].append(fun())
        cli_runs = []
        for i in range(opts.rounds):
            archive = tmp / f"cli-{i}"
            wall, cpu, _, cli_out = run_cli(
                ["record", "--replay", str(path), "--archive", str(archive), "--quiet"]
            )
            cli_runs.append((wall, cpu))
            shutil.rmtree(archive)
        runs["cli"] = cli_runs
        events.clear()
        gc.collect()

        wall = {k: min(w for w, _ in v) for k, v in runs.items()}
        cpu = {k: min(c for _, c in v) for k, v in runs.items()}
        names = {
            "state": "State alone (parsed dicts)",
            "ingest": "file -> State (json + State)",
            "recorder": "Recorder API (file -> Parquet)",
            "cli": "CLI subprocess (incl. start-up)",
        }
        print(
            f"{'path':33} {'CPU s':>6} {'events/s':>9} {'vs State':>8} {'vs file->State':>14}"
            f" {'wall s':>7} {'events/s':>9}"
        )
        for key, name in names.items():
            print(
                f"{name:33} {cpu[key]:6.2f} {n / cpu[key]:9,.0f} {cpu['state'] / cpu[key]:7.2f}x"
                f" {cpu['ingest'] / cpu[key]:13.2f}x {wall[key]:7.2f} {n / wall[key]:9,.0f}"
            )
        s = summaries[-1]
        print(
            f"\nRecorder run: {s.snapshots:,} snapshots, {s.rows:,} rows in {s.files} files "
            f"({s.bytes / 1e6:.1f} MB)\nCLI: {cli_out}"
        )
        ratio = cpu["state"] / cpu["recorder"]
        ingest_ratio = cpu["ingest"] / cpu["recorder"]
        print(
            f"\nGoal (CPU time): Recorder >= {GOAL_RATIO}x of State alone: {ratio:.2f}x "
            f"{'OK' if ratio >= GOAL_RATIO else 'MISSED'}; "
            f">= {GOAL_RATIO}x of file -> State: {ingest_ratio:.2f}x "
            f"{'OK' if ingest_ratio >= GOAL_RATIO else 'MISSED'}"
        )

        big = tmp / "big.jsonl"
        path.unlink()
        start = time.perf_counter()
        n_big = write_events(big, opts.big_events)
        print(
            f"\nMemory: {n_big:,} events ({big.stat().st_size / 1e6:.0f} MB, "
            f"written in {time.perf_counter() - start:.0f} s), --max-tasks 10000"
        )
        big_args = ["record", "--replay", str(big), "--archive", str(tmp / "big-archive")]
        seconds, cpu_s, rss, out = run_cli([*big_args, "--quiet", "--max-tasks", "10000"])
        rss_mb = rss / 2**20
        print(
            f"{out}\npeak RSS {rss_mb:.0f} MB; {seconds:.1f} s wall "
            f"({n_big / seconds:,.0f} events/s), {cpu_s:.1f} s CPU ({n_big / cpu_s:,.0f} events/s)"
        )
        print(f"Goal: peak RSS < {GOAL_RSS_MB} MB: {'OK' if rss_mb < GOAL_RSS_MB else 'MISSED'}")
        return 0 if rss_mb < GOAL_RSS_MB else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
