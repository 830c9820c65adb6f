"""Query benchmark: archiver's load()/latest() against hand-written pyarrow and naive pandas.

Generates (with pyarrow directly, in the archive's schema and layout) an archive of
10M+ task rows over 48 hourly partitions -- one zstd file per partition, 64 Ki-row
groups, sorted by ``captured_at`` like the camera and compaction write them -- then
measures, each case in its own fresh subprocess:

* ``archiver.load`` of a 2-hour window (not aligned to hours, so 3 partitions are
  touched) with 3 columns, against the same read written by hand with
  ``pyarrow.dataset`` (hive partition predicate + time filter) -- goal <= 1.1x --
  and against ``pandas.read_parquet`` of the whole archive filtered in pandas
  afterwards -- goal >= 10x faster;
* ``Archive.latest()`` of the whole archive (the last row of every task);
* ``Archive.history(uuid)`` of one task.

Times are medians of warm (page-cache) runs. The two 2-hour reads are timed in one
process, alternating, so that noise from other processes hits both alike. Peak memory
is the peak RSS (``VmHWM`` in ``/proc/self/status``) of a fresh process that imports
everything, records its RSS, then runs the case (once, or 3 times for latest/history);
"extra" is the peak minus that baseline.

Usage: python bench/bench_query.py [--rows 10000000] [--partitions 48] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
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

from archiver.schema import TASKS, with_metadata  # noqa: E402

HOUR_US = 3_600_000_000
BASE_US = 1_767_225_600 * 10**6  # 2026-01-01T00:00:00Z
NAMES = [f"proj.tasks.task_{i:02d}" for i in range(50)]
WORKERS = [f"celery@worker-{i:02d}" for i in range(16)]
WINDOW = (BASE_US + 20 * HOUR_US + 30 * 60 * 10**6, BASE_US + 22 * HOUR_US + 30 * 60 * 10**6)
COLUMNS = ["uuid", "state", "runtime"]
TRACEBACK = (
    'Traceback (most recent call last):\n  File "/app/.venv/lib/python3.11/site-packages/'
    'celery/app/trace.py", line 453, in trace_task\n    R = retval = fun(*args, **kwargs)\n'
    '  File "/app/proj/tasks.py", line 41, in run\n    raise ValueError(f"bad input '
    '(code={code})")\nValueError: bad input (code='
)


# -- generating -----------------------------------------------------------------------
def _uuids(rng: np.random.Generator, n: int) -> pa.Array:
    hexchars = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    digits = hexchars[rng.integers(0, 16, size=(n, 32), dtype=np.uint8)]
    out = np.empty((n, 36), dtype=np.uint8)
    dashes = [8, 13, 18, 23]
    out[:, dashes] = ord("-")
    out[:, [i for i in range(36) if i not in dashes]] = digits
    fixed = pa.FixedSizeBinaryArray.from_buffers(pa.binary(36), n, [None, pa.py_buffer(out)])
    return fixed.cast(pa.string())


def _ts(micros: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    return pa.array(micros.astype("i8"), pa.timestamp("us", tz="UTC"), mask=mask)


def _join(*parts) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def generate_hour(rng: np.random.Generator, hour: int, n_tasks: int, seq0: int) -> pa.Table:
    """Three versions (RECEIVED, STARTED, final) of ``n_tasks`` tasks in one hour."""
    start = BASE_US + hour * HOUR_US
    end = start + HOUR_US - 1
    zipf = 1.0 / np.arange(1, len(NAMES) + 1)
    name = rng.choice(len(NAMES), size=n_tasks, p=zipf / zipf.sum())
    worker = rng.integers(0, len(WORKERS), size=n_tasks)
    received = start + rng.integers(0, HOUR_US - 10 * 10**6, size=n_tasks)
    sent = received - rng.integers(100, 5_000, size=n_tasks)
    started = received + (rng.exponential(0.3, size=n_tasks) * 1e6).astype("i8")
    runtime = np.minimum(rng.lognormal(-2.0, 1.2, size=n_tasks), 60.0)
    done = np.minimum(started + (runtime * 1e6).astype("i8"), end)
    started = np.minimum(started, end)
    roll = rng.random(n_tasks)
    final = np.where(roll < 0.04, 4, np.where(roll < 0.05, 5, 3))  # FAILURE / RETRY / SUCCESS

    def snap(t: np.ndarray) -> np.ndarray:  # the next whole second: the next snapshot
        return np.minimum((t // 10**6 + 1) * 10**6, end)

    c1 = snap(received)
    c2 = np.minimum(np.maximum(snap(started), c1 + 10**6), end)
    c3 = np.minimum(np.maximum(snap(done), c2 + 10**6), end)
    task = np.tile(np.arange(n_tasks), 3)
    version = np.repeat([0, 1, 2], n_tasks)
    captured = np.concatenate([c1, c2, c3])
    order = np.argsort(captured, kind="stable")
    task, version, captured = task[order], version[order], captured[order]
    n = len(task)
    states = np.array([1, 2, 0])[version]  # RECEIVED, STARTED, final
    states = np.where(version == 2, final[task], states)
    state_names = pa.array(
        ["PENDING", "RECEIVED", "STARTED", "SUCCESS", "FAILURE", "RETRY"], pa.string()
    )
    is_final = version == 2
    failed = is_final & (final[task] == 4)
    succeeded = is_final & (final[task] == 3)
    uuid = _uuids(rng, n_tasks)
    a = pa.array(rng.integers(0, 10_000, size=n_tasks)).cast(pa.string())
    b = pa.array(rng.integers(0, 10_000, size=n_tasks)).cast(pa.string())
    code = pa.array(rng.integers(0, 100, size=n_tasks)).cast(pa.string())
    args = _join("(", a, ", ", b, ")")
    kwargs = _join('{"tag": "t', code, '"}')
    result = pc.cast(pc.add(a.cast(pa.int64()), b.cast(pa.int64())), pa.string())
    exception = _join("ValueError('bad input (code=", code, ")')")
    traceback = _join(TRACEBACK, code, ")\n")
    snapshot_ids = pa.array([f"bench0000001-{seq0 + i:08d}" for i in range(3601)], pa.string())
    t = pa.array(task)

    def per_task(arr: pa.Array) -> pa.Array:
        return arr.take(t)

    def only(arr: pa.Array, mask: np.ndarray) -> pa.Array:
        return pc.if_else(pa.array(mask), per_task(arr), pa.nulls(n, arr.type))

    last_event = np.where(version == 0, received[task], np.where(version == 1, started[task], 0))
    last_event = np.where(is_final, done[task], last_event)
    columns = {
        "captured_at": _ts(captured),
        "snapshot_id": snapshot_ids.take(pa.array((captured - start) // 10**6)),
        "uuid": per_task(uuid),
        "name": pa.array(NAMES).take(pa.array(name[task])).dictionary_encode(),
        "state": state_names.take(pa.array(states)).dictionary_encode(),
        "worker": pa.array(WORKERS).take(pa.array(worker[task])).dictionary_encode(),
        "sent": _ts(sent[task]),
        "received": _ts(received[task]),
        "started": _ts(started[task], mask=version < 1),
        "succeeded": _ts(done[task], mask=~succeeded),
        "failed": _ts(done[task], mask=~failed),
        "retried": _ts(done[task], mask=~(is_final & (final[task] == 5))),
        "revoked": pa.nulls(n, pa.timestamp("us", tz="UTC")),
        "rejected": pa.nulls(n, pa.timestamp("us", tz="UTC")),
        "timestamp": _ts(last_event),
        "args": per_task(args),
        "kwargs": per_task(kwargs),
        "result": only(result, succeeded),
        "exception": only(exception, failed),
        "traceback": only(traceback, failed),
        "eta": pa.nulls(n, pa.string()),
        "expires": pa.nulls(n, pa.string()),
        "retries": pa.array(np.where(final[task] == 5, 1, 0).astype("i4")),
        "runtime": pa.array(runtime[task], mask=~is_final),
        "exchange": pa.array(["celery"] * n).dictionary_encode(),
        "routing_key": pa.array(["celery"] * n).dictionary_encode(),
        "client": pa.nulls(n, pa.string()).dictionary_encode(),
        "root_id": per_task(uuid),
        "parent_id": pa.nulls(n, pa.string()),
        "clock": pa.array(np.arange(seq0, seq0 + n, dtype="i8")),
    }
    schema = with_metadata(TASKS, "tasks")
    arrays = [columns[f.name].cast(f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def generate(root: Path, rows: int, partitions: int) -> tuple[int, int]:
    """Write the archive; returns (rows, bytes)."""
    rng = np.random.default_rng(42)
    per_hour = -(-rows // (3 * partitions))
    total = size = 0
    for hour in range(partitions):
        table = generate_hour(rng, hour, per_hour, hour * 3600)
        start = BASE_US + hour * HOUR_US
        day = time.strftime("%Y-%m-%d", time.gmtime(start // 10**6))
        directory = root / "tasks" / f"date={day}" / f"hour={hour % 24}"
        directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(start // 10**6))
        path = directory / f"part-{stamp}-bench0000001-{hour + 1:06d}.parquet"
        pq.write_table(table, path, compression="zstd", row_group_size=65_536)
        total += table.num_rows
        size += path.stat().st_size
    return total, size


# -- the cases (run in subprocesses) -----------------------------------------------------
def _window():
    import pandas as pd

    return (
        pd.Timestamp(WINDOW[0], unit="us", tz="UTC"),
        pd.Timestamp(WINDOW[1], unit="us", tz="UTC"),
    )


def case_archiver_load(archive: str):
    import archiver

    start, end = _window()
    return archiver.load(archive, "tasks", start=start, end=end, columns=COLUMNS)


def case_pyarrow_by_hand(archive: str):
    import pyarrow.dataset as pds

    start, end = _window()
    dataset = pds.dataset(
        f"{archive}/tasks",
        format="parquet",
        partitioning=pds.partitioning(
            pa.schema([("date", pa.string()), ("hour", pa.int32())]), flavor="hive"
        ),
    )
    hours = set()
    t = start.floor("h")
    while t < end:
        hours.add((t.strftime("%Y-%m-%d"), t.hour))
        t += pd_hour()
    part = None
    for day, hour in sorted(hours):
        cond = (pds.field("date") == day) & (pds.field("hour") == hour)
        part = cond if part is None else part | cond
    ts = pa.timestamp("us", tz="UTC")
    expr = (
        part
        & (pds.field("captured_at") >= pa.scalar(start.value // 1000, ts))
        & (pds.field("captured_at") < pa.scalar(end.value // 1000, ts))
    )
    return dataset.to_table(columns=COLUMNS, filter=expr).to_pandas()


def pd_hour():
    import pandas as pd

    return pd.Timedelta(hours=1)


def case_pandas_full(archive: str):
    import pandas as pd

    start, end = _window()
    df = pd.read_parquet(f"{archive}/tasks")
    return df.loc[(df["captured_at"] >= start) & (df["captured_at"] < end), COLUMNS]


def case_latest(archive: str):
    import archiver

    return archiver.Archive(archive).latest("tasks")


def case_history(archive: str):
    import archiver

    a = archiver.Archive(archive)
    uuid = a.load("tasks", limit=1, columns=["uuid"], start=_window()[0])["uuid"].iloc[0]
    return a.history(uuid)


CASES = {
    "archiver_load": case_archiver_load,
    "pyarrow_by_hand": case_pyarrow_by_hand,
    "pandas_full": case_pandas_full,
    "latest": case_latest,
    "history": case_history,
}


def _status_mb(key: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in MiB.

    Not ``getrusage().ru_maxrss``: Linux carries it over ``execve``, so a child would
    report the parent's peak (here, the generator's) if that is higher.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def child(args: argparse.Namespace) -> None:
    import pandas  # noqa: F401
    import pyarrow.dataset  # noqa: F401

    import archiver  # noqa: F401  (import everything before the baseline)

    names = args.case.split(",")
    baseline = _status_mb("VmRSS")
    times: dict[str, list[float]] = {n: [] for n in names}
    rows = {}
    for _ in range(args.repeat):
        for name in names:  # alternate the cases so that noise hits them alike
            t0 = time.perf_counter()
            out = CASES[name](args.archive)
            times[name].append(time.perf_counter() - t0)
            rows[name] = len(out)
            del out
    peak = _status_mb("VmHWM")
    print(json.dumps({"times": times, "rows": rows, "baseline_mb": baseline, "peak_mb": peak}))


def run_child(archive: str, cases: str, repeat: int) -> dict:
    cmd = [sys.executable, __file__, "--child", cases, "--archive", archive]
    cmd += ["--repeat", str(repeat)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--partitions", type=int, default=48)
    parser.add_argument("--repeat", type=int, default=15, help="runs of the 2-hour reads")
    parser.add_argument("--keep", help="generate into (or reuse) this directory")
    parser.add_argument("--child", dest="case", help=argparse.SUPPRESS)
    parser.add_argument("--archive", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        return child(args)

    tmp = None
    if args.keep:
        root = Path(args.keep)
    else:
        tmp = tempfile.mkdtemp(prefix="bench-query-")
        root = Path(tmp)
    try:
        if not (root / "tasks").exists():
            t0 = time.perf_counter()
            rows, size = generate(root, args.rows, args.partitions)
            print(
                f"generated {rows:,} task rows in {args.partitions} hourly partitions, "
                f"{size / 2**20:.0f} MiB, in {time.perf_counter() - t0:.0f} s ({root})"
            )
        archive = str(root)
        run_child(archive, "archiver_load,pyarrow_by_hand", 2)  # warm the page cache
        timing = run_child(archive, "archiver_load,pyarrow_by_hand", args.repeat)
        results = {}
        for name, repeat in [
            ("archiver_load", 1),
            ("pyarrow_by_hand", 1),
            ("pandas_full", 1),
            ("latest", 3),
            ("history", 3),
        ]:
            results[name] = run_child(archive, name, repeat)
        for name in ("archiver_load", "pyarrow_by_hand"):
            results[name]["times"][name] = timing["times"][name]

        def ms(name: str) -> float:
            return statistics.median(results[name]["times"][name]) * 1000

        rows = [
            ("load 2h window, 3 cols (archiver)", "archiver_load"),
            ("same read by hand (pyarrow.dataset)", "pyarrow_by_hand"),
            ("pandas.read_parquet(all) + filter", "pandas_full"),
            ("latest() whole archive", "latest"),
            ("history(uuid)", "history"),
        ]
        print()
        header = (
            f"{'case':38} {'rows':>11} {'median ms':>10} {'peak RSS MiB':>13} {'extra MiB':>10}"
        )
        print(header)
        print("-" * len(header))
        for label, name in rows:
            r = results[name]
            print(
                f"{label:38} {r['rows'][name]:>11,} {ms(name):>10.1f} {r['peak_mb']:>13.0f} "
                f"{r['peak_mb'] - r['baseline_mb']:>10.0f}"
            )
        ratio_hand = ms("archiver_load") / ms("pyarrow_by_hand")
        ratio_pandas = ms("pandas_full") / ms("archiver_load")
        print()
        print(
            f"archiver / by-hand pyarrow: {ratio_hand:.2f}x (goal <= 1.1x: "
            f"{'met' if ratio_hand <= 1.1 else 'MISSED'})"
        )
        print(
            f"pandas full read / archiver: {ratio_pandas:.0f}x faster (goal >= 10x: "
            f"{'met' if ratio_pandas >= 10 else 'MISSED'})"
        )
        print(
            f"(2-hour reads: medians of {args.repeat} alternating warm runs in one process; "
            "others: median of 1-3 runs; peak RSS = VmHWM of a fresh process per case, "
            "extra = peak minus RSS after imports)"
        )
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
