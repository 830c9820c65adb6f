"""End-to-end replay throughput of `archiver record`, and its peak memory on 1M events.

Throughput (one run, the same file for every line of the table, best of ``--rounds``):

* ``State alone``: ``archiver.State.event`` fed the events already parsed in memory;
* ``file -> State``: the same file read and parsed line by line (stdlib ``json``, the
  recorder's own reader) into ``archiver.State``: ingestion without any archiving;
* ``Recorder API``: ``Recorder(archive).replay_file(path)`` at ``--speed 0``: file ->
  State -> snapshots every second of event time -> Parquet (the default camera);
* ``CLI subprocess``: ``python -m archiver record --replay FILE --quiet``, for reference
  (it includes the interpreter's start-up and imports).

Goal: the Recorder runs at >= 0.7x the "State alone" rate, i.e. archiving costs less than 30%.

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


def best(fun, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        gc.collect()
        start = time.perf_counter()
        fun()
        times.append(time.perf_counter() - start)
    return min(times)


LAUNCHER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({
    "seconds": time.perf_counter() - start,
    "maxrss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    "rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr,
}))
"""


def run_cli(args: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (bytes) and stdout of ``python -m archiver ARGS``.

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
    return result["seconds"], result["maxrss"], result["stdout"].strip()


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

        def state_alone() -> float:
            copies = [dict(e) for e in events]  # State may keep the dicts: fresh copies
            gc.collect()
            state = State()
            feed = state.event
            start = time.perf_counter()
            for e in copies:
                feed(e)
            return time.perf_counter() - start

        def file_to_state() -> None:  # the recorder's own reader, no camera
            state = State()
            feed = state.event
            with open(path, "rb") as f:
                for event in read_events(f, LineStats()):
                    feed(event)

        summaries = []

        def recorder_api() -> None:
            archive = tmp / f"archive-{len(summaries)}"
            summaries.append(Recorder(str(archive)).replay_file(str(path)))
            shutil.rmtree(archive)

        # Interleaved rounds, so that every path sees the same load on the machine.
        timings: dict[str, list[float]] = {"state": [], "ingest": [], "recorder": []}
        for _ in range(opts.rounds):
            timings["state"].append(state_alone())
            timings["ingest"].append(best(file_to_state, 1))
            timings["recorder"].append(best(recorder_api, 1))
        t_state, t_ingest, t_recorder = (min(timings[k]) for k in ("state", "ingest", "recorder"))
        cli_times = []
        for i in range(opts.rounds):
            archive = tmp / f"cli-{i}"
            seconds, _, cli_out = run_cli(
                ["record", "--replay", str(path), "--archive", str(archive), "--quiet"]
            )
            cli_times.append(seconds)
            shutil.rmtree(archive)
        t_cli = min(cli_times)
        events.clear()
        gc.collect()

        rows = [
            ("State alone (parsed dicts)", t_state),
            ("file -> State (json + State)", t_ingest),
            ("Recorder API (file -> Parquet)", t_recorder),
            ("CLI subprocess (incl. start-up)", t_cli),
        ]
        print(f"{'path':34} {'seconds':>8} {'events/s':>11} {'vs State':>9} {'vs file->State':>15}")
        for name, seconds in rows:
            print(
                f"{name:34} {seconds:8.2f} {n / seconds:11,.0f} {t_state / seconds:8.2f}x "
                f"{t_ingest / seconds:14.2f}x"
            )
        s = summaries[-1]
        print(
            f"\nRecorder run: {s.snapshots:,} snapshots, {s.rows:,} rows in {s.files} files "
            f"({s.bytes / 1e6:.1f} MB)\nCLI: {cli_out}"
        )
        ratio = t_state / t_recorder
        ingest_ratio = t_ingest / t_recorder
        print(
            f"\nGoal: Recorder >= {GOAL_RATIO}x of State alone: {ratio:.2f}x "
            f"{'OK' if ratio >= GOAL_RATIO else 'MISSED'} "
            f"(>= {GOAL_RATIO}x of file -> State: {ingest_ratio:.2f}x "
            f"{'OK' if ingest_ratio >= GOAL_RATIO else 'MISSED'})"
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
        seconds, rss, out = run_cli([*big_args, "--quiet", "--max-tasks", "10000"])
        rss_mb = rss / 2**20
        print(
            f"{out}\npeak RSS {rss_mb:.0f} MB in {seconds:.1f} s ({n_big / seconds:,.0f} events/s)"
        )
        print(f"Goal: peak RSS < {GOAL_RSS_MB} MB: {'OK' if rss_mb < GOAL_RSS_MB else 'MISSED'}")
        return 0 if rss_mb < GOAL_RSS_MB else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
