"""Durability benchmark: what page checksums and fsync cost, on the camera and on compaction.

Each case runs the same code four ways, interleaved in one run (so that the load of
a shared machine hits them alike): checksums and fsync both off (the baseline), each
one alone, and both on (the default). Printed: the median time, the median over
rounds of the throughput ratio to the baseline in the same round (1.00x: free; 0.80x:
20% slower) by wall time (with its range) and by CPU time of this process (less
disturbed by other processes; fsync waits are not CPU), and the fsync calls per run
and the seconds spent in them (timed around each call).

(a) camera: ``--snapshots`` snapshots of ``--changed`` changed tasks (real task
    objects: the recorded events replayed into an ``archiver.State``), a flush every
    ``--flush-every`` snapshots (one file per table and flush, as a recorder does);
(b) compaction: ``--hours`` closed hours of ``--copies`` replays of the sample, one
    file per ``--snapshots-per-file`` snapshots, compacted (``maintenance.compact``).

Usage: python bench/bench_durability.py [--tasks 20000] [--changed 1000] [--snapshots 100]
       [--flush-every 5] [--hours 6] [--copies 2] [--snapshots-per-file 3] [--repeat 5]
       [--dir DIR]   (DIR: where to write, e.g. a real disk instead of a tmpfs /tmp)
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_camera import Frozen, NoTimer, amplified, build_state, load_events  # noqa: E402
from bench_cleanup import build_day, record_sample  # noqa: E402

from archiver import ParquetCamera, State, maintenance, sink, storage  # noqa: E402

MODES = {
    "neither (baseline)": (False, False),
    "checksums": (True, False),
    "fsync": (False, True),
    "checksums + fsync": (True, True),
}


def setting(checksums: bool, fsync: bool) -> None:
    sink.PAGE_CHECKSUMS = checksums
    storage.FSYNC = fsync


def camera_case(out: Path, frozen: list[Frozen], workers, flush_every: int) -> Callable[[], int]:
    def run() -> int:
        shutil.rmtree(out, ignore_errors=True)
        now = [1_700_000_000.0]
        camera = ParquetCamera(
            None, out, timer=NoTimer(), clock=lambda: now[0], flush_interval=1e9,
            flush_rows=10_000_000, max_buffer_rows=10_000_000,
        )  # fmt: skip
        for n, state in enumerate(frozen, 1):
            now[0] += 1.0
            camera.on_shutter(state)
            if n % flush_every == 0:
                camera.flush()
        camera.flush()
        assert camera.sink.stats.write_errors == 0
        return camera.sink.stats.rows_written

    return run


class Timings:
    """Per mode and round: wall seconds, CPU seconds, and fsync calls and seconds."""

    def __init__(self, names: list[str]) -> None:
        self.wall: dict[str, list[float]] = {n: [] for n in names}
        self.cpu: dict[str, list[float]] = {n: [] for n in names}
        self.fsyncs: dict[str, list[tuple[int, float]]] = {n: [] for n in names}


def interleaved(
    cases: dict[str, Callable[[], object]], repeat: int, setup: Callable[[], None] | None = None
) -> Timings:
    """Run the modes in turn, in a rotating order, ``repeat`` rounds."""
    names = list(cases)
    out = Timings(names)
    real = storage.fsync_path
    calls: list[float] = []

    def timed_fsync(path: str) -> None:
        start = time.perf_counter()
        real(path)
        calls.append(time.perf_counter() - start)

    storage.fsync_path = timed_fsync
    try:
        for round_ in range(repeat):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                if setup is not None:
                    setup()
                setting(*MODES[name])
                gc.collect()
                calls.clear()
                wall, cpu = time.perf_counter(), time.process_time()
                cases[name]()
                out.wall[name].append(time.perf_counter() - wall)
                out.cpu[name].append(time.process_time() - cpu)
                out.fsyncs[name].append((len(calls), sum(calls)))
    finally:
        storage.fsync_path = real
        setting(True, True)
    return out


def report(title: str, t: Timings, units: float) -> None:
    """Per mode: median wall time and rows/s; the ratio of throughput to the baseline
    (median of the ratios within each round: paired, so slow phases of a shared
    machine cancel out), by wall time and by CPU time; fsync calls and their time."""
    print(title)
    base_wall, base_cpu = t.wall["neither (baseline)"], t.cpu["neither (baseline)"]
    header = (
        f"{'checksums / fsync':<20} {'wall s':>7} {'rows/s':>9} {'wall ratio':>11} "
        f"{'(range)':>11} {'CPU ratio':>10} {'fsyncs':>7} {'fsync s':>8}"
    )
    print(header)
    print("-" * len(header))
    for name in t.wall:
        wall = sorted(b / s for b, s in zip(base_wall, t.wall[name]))
        cpu = statistics.median(b / s for b, s in zip(base_cpu, t.cpu[name]))
        median = statistics.median(t.wall[name])
        calls = statistics.median(n for n, _ in t.fsyncs[name])
        spent = statistics.median(s for _, s in t.fsyncs[name])
        print(
            f"{name:<20} {median:7.3f} {units / median:9,.0f} {statistics.median(wall):10.2f}x "
            f"{wall[0]:5.2f}-{wall[-1]:<5.2f} {cpu:9.2f}x {calls:7.0f} {spent:8.3f}"
        )
    print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--changed", type=int, default=1000)
    parser.add_argument("--snapshots", type=int, default=100)
    parser.add_argument("--flush-every", type=int, default=5)
    parser.add_argument("--hours", type=int, default=6)
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--snapshots-per-file", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", help="where to write (default: a temporary directory)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-durability-", dir=args.dir))
    try:
        # (a) the camera
        events = load_events()
        per_copy = len({e["uuid"] for e in events if e["type"].startswith("task-")})
        state = build_state(State, amplified(events, -(-args.tasks // per_copy)), args.tasks)
        tasks = list(state.tasks.values())
        workers = dict(state.workers.items())
        frozen = [
            Frozen([tasks[(i * args.changed + j) % len(tasks)] for j in range(args.changed)], {})
            for i in range(args.snapshots)
        ]
        run = camera_case(work / "camera", frozen, workers, args.flush_every)
        rows = run()  # warm up
        files = sum(1 for _ in (work / "camera").rglob("*.parquet"))
        medians = interleaved(dict.fromkeys(MODES, run), args.repeat)
        report(
            f"(a) camera: {args.snapshots} snapshots x {args.changed:,} task rows, a flush "
            f"every {args.flush_every} ({files} files, {rows:,} rows); median of {args.repeat}",
            medians,
            rows,
        )

        # (b) compaction
        raw = work / "raw"
        build_day(
            raw,
            record_sample(work / "sample"),
            hours=args.hours,
            copies=args.copies,
            per_file=args.snapshots_per_file,
        )
        n_files = sum(1 for _ in raw.rglob("*.parquet"))
        copy = work / "copy"

        def fresh() -> None:
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(raw, copy)

        fresh()
        result = maintenance.compact(copy)  # warm up
        compact = dict.fromkeys(MODES, lambda: maintenance.compact(copy))
        medians = interleaved(compact, args.repeat, fresh)
        report(
            f"(b) compaction: {args.hours} h x {args.copies} replays, {n_files} files -> "
            f"{result.files_out}, {result.rows:,} rows; median of {args.repeat}",
            medians,
            result.rows,
        )
        print(f"# written under {work} ({'tmpfs' if _tmpfs(work) else 'not tmpfs'})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _tmpfs(path: Path) -> bool:
    """Whether ``path`` is on a tmpfs (where fsync costs nothing)."""
    best, kind = "", ""
    with open("/proc/mounts") as f:
        for line in f:
            _, mount, fstype, *_ = line.split()
            if str(path).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fstype
    return kind == "tmpfs"


if __name__ == "__main__":
    main()
