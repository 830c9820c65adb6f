"""What a glob reader (DuckDB over ``tasks/*/*/*.parquet``) sees during a compaction.

Builds a day (24 closed hours) of small files the way bench_cleanup.py does, then
compacts a copy while a thread polls DuckDB with ``count(*)`` and
``count(DISTINCT (uuid, snapshot_id))`` over the glob, as fast as it can. Reports:
polls, polls that saw a row twice (count > distinct), the largest excess, polls that
failed (e.g. "No such file"), and the compaction's time with and without the poller.

Usage: ``python bench/bench_glob_readers.py [--hours 24] [--copies 10] [--repeat 3]
[--template DIR] [--grace 0 --grace 1s] [--reader glob|files]`` (each ``--grace`` is
measured in turn, by default the default grace; give none to a version without it).
To compare with another commit, copy this file into that checkout's ``bench/`` and
run it there too (it imports archiver from the checkout it sits in), on the same
``--template``, alternating runs: the machine's load moves the times a lot.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import duckdb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cleanup import build_day, record_sample  # noqa: E402

import archiver  # noqa: E402
from archiver import maintenance  # noqa: E402


def poll_during(path: Path, fun: Callable[[], object], reader: str = "glob") -> dict[str, Any]:
    """Run ``fun`` while a thread polls DuckDB over the glob (or, with ``reader="files"``,
    over a fresh ``Archive.files()`` list each time); what the polls saw."""
    glob = f"{path}/tasks/*/*/*.parquet"

    def query() -> str:
        files = repr(archiver.Archive(path).files("tasks")) if reader == "files" else f"'{glob}'"
        return f"SELECT count(*), count(DISTINCT (uuid, snapshot_id)) FROM read_parquet({files})"

    stop = threading.Event()
    stats: dict[str, Any] = {"polls": 0, "duplicates": 0, "max_excess": 0, "failed": 0}
    errors: list[str] = []

    def poll() -> None:
        con = duckdb.connect()
        while not stop.is_set():
            try:
                rows, distinct = con.execute(query()).fetchone() or (0, 0)
            except (duckdb.Error, archiver.ArchiverError) as exc:
                stats["failed"] += 1
                errors.append(str(exc).splitlines()[0][:120])
                continue
            stats["polls"] += 1
            if rows > distinct:
                stats["duplicates"] += 1
                stats["max_excess"] = max(stats["max_excess"], rows - distinct)
        con.close()

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.2)  # the poller is running before the compaction starts
    t0 = time.perf_counter()
    try:
        fun()
    finally:
        seconds = time.perf_counter() - t0
        time.sleep(0.2)
        stop.set()
        thread.join()
    stats["seconds"] = seconds
    if errors:
        stats["first_error"] = errors[0]
    return stats


def measure(work: Path, template: Path, repeat: int, grace: str | None, reader: str) -> None:
    """Compact copies of ``template`` alone and under the poller; print what polls saw."""
    options = {} if grace is None else {"grace": grace}
    compact = partial(maintenance.compact, **options)
    label = ("default grace" if grace is None else f"grace {grace}") + f", {reader} reader"
    plain, polled = [], []
    for i in range(repeat):
        copy = work / f"copy{i}"
        shutil.copytree(template, copy)
        t0 = time.perf_counter()
        compact(copy)
        plain.append(time.perf_counter() - t0)
        shutil.rmtree(copy)
        shutil.copytree(template, copy)
        stats = poll_during(copy, partial(compact, copy), reader)
        polled.append(stats)
        print(f"{label}, run {i + 1}: compact alone {plain[-1]:.2f}s; with the poller: {stats}")
        shutil.rmtree(copy)
    total = {k: sum(s[k] for s in polled) for k in ("polls", "duplicates", "failed")}
    print(
        f"{label}: compact alone: median {statistics.median(plain):.2f}s; with the poller: "
        f"median {statistics.median(s['seconds'] for s in polled):.2f}s; polls "
        f"{total['polls']}, saw duplicates {total['duplicates']}, largest excess "
        f"{max(s['max_excess'] for s in polled)}, failed {total['failed']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--copies", type=int, default=10, help="replays of the sample per hour")
    parser.add_argument("--snapshots-per-file", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--template", type=Path, help="keep the built archive here, or reuse it if present"
    )
    parser.add_argument(
        "--grace", action="append", help="a grace for compact (repeatable; default: its default)"
    )
    parser.add_argument(
        "--reader",
        choices=["glob", "files"],
        default="glob",
        help="poll a glob of the folders, or a fresh Archive.files() list (exact)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-glob-"))
    try:
        template = args.template or work / "template"
        if not template.exists():
            base = record_sample(work / "sample")
            build_day(
                template,
                base,
                hours=args.hours,
                copies=args.copies,
                per_file=args.snapshots_per_file,
            )
        arch = archiver.Archive(template)
        rows = {t: len(arch.read(t, columns=["captured_at"])) for t in arch.tables()}
        files = {t: len(arch.files(t)) for t in arch.tables()}
        print(f"archiver at {ROOT}")
        print(f"archive: {args.hours} hours, rows {rows} (total {sum(rows.values()):,}), "
              f"files {files}")  # fmt: skip
        for grace in args.grace or [None]:
            measure(work, template, args.repeat, grace, args.reader)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
