"""Compaction: merge the small files of closed partitions (the caller holds the lock)."""

from __future__ import annotations

import math
import time

import pyarrow as pa
import pyarrow.fs as pafs

from ..archive import Archive
from ..errors import one_line
from ..layout import Partition
from ..listing import TEMP_MAX_AGE, Damaged, PartitionScan, scan_partition
from ..rows import latest_rows, sort_rows
from ..schema import ENTITY_KEYS
from ..sink import recover_flushes
from ..storage import Location
from .recovery import delete_file, finish_interrupted, remove_set_aside
from .reports import CompactionReport, PartitionCompaction, ProgressCallback
from .retention import Keep
from .rewrite import read_inputs, rows_per_group, write_group

#: Files at least this fraction of the target size are left alone.
NEAR_TARGET = 0.75


def _plan(scan: PartitionScan, keep: Keep, target_bytes: int) -> list[pafs.FileInfo]:
    """The files of a partition to merge (empty: leave the partition alone)."""
    if keep == "latest":
        infos = [scan.infos.get(i.base_name) for i in scan.visible]
        groups = {info.group for info in infos if info is not None}
        done = all(i is not None and i.keep == "latest" for i in infos) and len(groups) <= 1
        return [] if done else list(scan.visible)
    small = [i for i in scan.visible if i.size < NEAR_TARGET * target_bytes]
    return small if len(small) > 1 else []


def _compact_partition(
    location: Location,
    partition: Partition,
    files: list[pafs.FileInfo],
    keep: Keep,
    target_bytes: int,
    damaged: Damaged,
) -> tuple[PartitionCompaction | None, list[str]]:
    """Merge ``files``; the ones that turn out damaged are left alone (and reported)."""
    data, schema, good = read_inputs(location, partition.table, [i.path for i in files], damaged)
    files = [i for i in files if i.path in set(good)]
    if not files:
        return None, []
    rows_in = data.num_rows
    if keep == "latest" and partition.table in ENTITY_KEYS:
        data = latest_rows(data, ENTITY_KEYS[partition.table])
    else:
        data = sort_rows(data)
    bytes_in = sum(i.size for i in files)
    outs = write_group(
        location,
        partition.path,
        data,
        schema,
        replaces=[i.base_name for i in files],
        keep=keep,
        target_bytes=target_bytes,
        slice_rows=rows_per_group(target_bytes, bytes_in, rows_in),
    )
    report = PartitionCompaction(
        partition.table,
        partition.date,
        partition.hour,
        files_in=len(files),
        files_out=len(outs),
        rows_in=rows_in,
        rows_out=data.num_rows,
        bytes_in=bytes_in,
        bytes_out=sum(o.size for o in outs),
    )
    return report, [i.path for i in files]


def compact_locked(
    archive: Archive,
    tables: list[str],
    *,
    before_us: int,
    target_bytes: int,
    keep: Keep,
    dry_run: bool,
    progress: ProgressCallback | None,
) -> CompactionReport:
    started = time.perf_counter()
    location = archive.location
    wall = time.time()
    recovered = temps = 0
    results: list[PartitionCompaction] = []
    to_delete: list[str] = []
    skipped: dict[str, str] = {}

    def note(path: str, reason: str) -> None:
        skipped.setdefault(path, reason)

    archive = archive.using(note)
    work = [(t, p) for t in tables for p in archive.partitions(t)]
    closed = [(t, p) for t, p in work if p.ended_by(before_us)]
    done = 0
    try:
        if not dry_run:  # a recorder's flush a crash interrupted, an hour ago or more
            recovered += sum(recover_flushes(location, min_age=TEMP_MAX_AGE))
        for table in tables:
            if not dry_run:
                recovered += remove_set_aside(location, table)
        for table, partition in work:
            scan = scan_partition(location, partition, note, wall=wall)
            if not dry_run and (scan.leftovers or scan.temps):
                r, t = finish_interrupted(location, partition, scan)
                recovered, temps = recovered + r, temps + t
                # Plan on what is left, not on the old list.
                scan = scan_partition(location, partition, note, wall=wall)
            if not partition.ended_by(before_us):
                continue
            files = _plan(scan, keep, target_bytes)
            if files and dry_run:
                rows = sum(scan.num_rows(i) for i in files)
                size = sum(i.size for i in files)
                estimate = max(1, math.ceil(size / target_bytes))
                results.append(
                    PartitionCompaction(
                        table, partition.date, partition.hour, len(files), estimate,
                        rows, rows, size, size,
                    )
                )  # fmt: skip
            elif files:
                try:
                    result, inputs = _compact_partition(
                        location, partition, files, keep, target_bytes, note
                    )
                except (pa.ArrowException, ValueError) as exc:  # never blocks the others
                    note(partition.path, f"not compacted: {one_line(exc)}")
                    result, inputs = None, []
                if result is not None:
                    results.append(result)
                to_delete.extend(inputs)
            done += 1
            if progress is not None:
                progress(done, len(closed))
    finally:
        # Inputs go last and together: readers see at most one short window in
        # which a file they listed disappears (they then list again).
        for path in to_delete:
            delete_file(location, path)
        location.sync_parents(to_delete)
    return CompactionReport(
        tuple(results),
        seconds=time.perf_counter() - started,
        dry_run=dry_run,
        recovered=recovered,
        temps_removed=temps,
        skipped=tuple(sorted(skipped.items())),
    )
