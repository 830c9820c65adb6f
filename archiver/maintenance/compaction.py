"""Compaction: merge the small files of closed partitions (the caller holds the lock)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..archive import Archive
from ..errors import one_line
from ..layout import Partition
from ..listing import TEMP_MAX_AGE, Damaged, PartitionScan, scan_partition
from ..rows import latest_rows, sort_rows
from ..schema import ENTITY_KEYS
from ..sink import recover_flushes
from ..storage import Location
from .recovery import (
    DeferredDeletes,
    finish_interrupted,
    remove_set_aside,
    repair_locked,
)
from .reports import CompactionReport, PartitionCompaction, ProgressCallback
from .retention import DEFAULT_GRACE, Keep
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
    deletes: DeferredDeletes,
) -> PartitionCompaction | None:
    """Merge ``files``; their deletion is left to ``deletes`` (the ones that turn out
    damaged are left alone, and reported)."""
    data, schema, good = read_inputs(location, partition.table, [i.path for i in files], damaged)
    files = [i for i in files if i.path in set(good)]
    if not files:
        return None
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
        before_commit=deletes.before_commit,
    )
    deletes.committed(
        outs[0].group, [i.path for i in files], [o.final for o in outs if o.rows == 0]
    )
    return PartitionCompaction(
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


def _estimate(
    location: Location,
    scan: PartitionScan,
    partition: Partition,
    files: list[pafs.FileInfo],
    keep: Keep,
    target_bytes: int,
) -> PartitionCompaction:
    """What merging ``files`` would do (a dry run; ``files_out`` and bytes are bounds).

    With ``keep="latest"`` the rows kept are counted exactly, from the key column alone,
    so that the plan shows the rows a real run would delete.
    """
    rows = sum(scan.num_rows(i) for i in files)
    rows_out = rows
    key = ENTITY_KEYS.get(partition.table)
    if keep == "latest" and key is not None and files:
        try:
            keys = pq.read_table([i.path for i in files], columns=[key], filesystem=location.fs)
            rows_out = pc.count_distinct(keys.column(key), mode="all").as_py()
        except (OSError, pa.ArrowException):  # the real run skips what it cannot read
            pass
    size = sum(i.size for i in files)
    estimate = max(1, math.ceil(size / target_bytes))
    return PartitionCompaction(
        partition.table, partition.date, partition.hour, len(files), estimate,
        rows, rows_out, size, size,
    )  # fmt: skip


@dataclass
class _Run:
    """One compaction run: its settings and what it did so far."""

    location: Location
    keep: Keep
    target_bytes: int
    dry_run: bool
    deletes: DeferredDeletes
    wall: float = field(default_factory=time.time)
    recovered: int = 0
    temps: int = 0
    results: list[PartitionCompaction] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def note(self, path: str, reason: str) -> None:
        self.skipped.setdefault(path, reason)

    def finish_earlier_runs(self, tables: list[str]) -> None:
        """Finish what crashed runs and recorders left half-done (journaled commits,
        flushes an hour old or more, hours renamed aside by an expiry)."""
        self.recovered += repair_locked(self.location, self.note)
        self.recovered += sum(recover_flushes(self.location, min_age=TEMP_MAX_AGE))
        for table in tables:
            self.recovered += remove_set_aside(self.location, table)

    def scan(self, partition: Partition) -> PartitionScan:
        """List ``partition``, first finishing an interrupted commit found there."""
        scan = scan_partition(self.location, partition, self.note, wall=self.wall)
        if not self.dry_run and (scan.leftovers or scan.temps):
            r, t = finish_interrupted(self.location, partition, scan)
            self.recovered, self.temps = self.recovered + r, self.temps + t
            # Plan on what is left, not on the old list.
            scan = scan_partition(self.location, partition, self.note, wall=self.wall)
        return scan

    def compact(self, partition: Partition, scan: PartitionScan) -> None:
        """Merge the partition's small files (or estimate it, in a dry run)."""
        files = _plan(scan, self.keep, self.target_bytes)
        if not files:
            return
        if self.dry_run:
            self.results.append(
                _estimate(self.location, scan, partition, files, self.keep, self.target_bytes)
            )
            return
        try:
            result = _compact_partition(
                self.location,
                partition,
                files,
                self.keep,
                self.target_bytes,
                self.note,
                self.deletes,
            )
        except (pa.ArrowException, ValueError) as exc:  # never blocks the others
            self.note(partition.path, f"not compacted: {one_line(exc)}")
            result = None
        if result is not None:
            self.results.append(result)


def compact_locked(
    archive: Archive,
    tables: list[str],
    *,
    before_us: int,
    target_bytes: int,
    keep: Keep,
    dry_run: bool,
    progress: ProgressCallback | None,
    grace: float = DEFAULT_GRACE,
) -> CompactionReport:
    """Compact the closed partitions of ``tables`` (the caller holds the lock).

    Each group's inputs are deleted ``grace`` seconds after its commit, before the
    next group's (see :class:`~.recovery.DeferredDeletes`).
    """
    started = time.perf_counter()
    deletes = DeferredDeletes(archive.location, grace)
    run = _Run(archive.location, keep, target_bytes, dry_run, deletes)
    archive = archive.using(run.note)
    work = [(t, p) for t in tables for p in archive.partitions(t)]
    closed = sum(1 for _, p in work if p.ended_by(before_us))
    if not dry_run:
        run.finish_earlier_runs(tables)
    done = 0
    for _table, partition in work:
        scan = run.scan(partition)
        if not partition.ended_by(before_us):
            continue
        run.compact(partition, scan)
        done += 1
        if progress is not None:
            progress(done, closed)
    deletes.finish()
    return CompactionReport(
        tuple(run.results),
        seconds=time.perf_counter() - started,
        dry_run=dry_run,
        recovered=run.recovered,
        temps_removed=run.temps,
        skipped=tuple(sorted(run.skipped.items())),
    )
