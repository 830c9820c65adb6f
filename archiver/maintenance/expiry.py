"""Expiry: drop old partitions, and tasks expired by state (the caller holds the lock)."""

from __future__ import annotations

import contextlib
import difflib
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..archive import Archive
from ..errors import ArchiverError
from ..layout import EXPIRED_MARK, Partition, expiring_marker
from ..listing import (
    PARQUET,
    TEMP_MAX_AGE,
    Damaged,
    PartitionScan,
    is_missing_file,
    mark_damaged,
    scan_partition,
)
from ..rows import sort_rows
from ..schema import TASK_STATES, TASKS
from ..sink import new_writer_id, recover_flushes
from ..storage import Location
from ..timeparse import to_micros
from .recovery import (
    DeferredDeletes,
    finish_expiring,
    finish_interrupted,
    remove_set_aside,
    repair_locked,
    step,
)
from .reports import ExpiryReport, PartitionExpiry, ProgressCallback, StateExpiry
from .retention import DEFAULT_GRACE, DEFAULT_TARGET_FILE_BYTES
from .rewrite import read_inputs, rows_per_group, write_group


def _expired_tasks(
    location: Location,
    partitions: list[Partition],
    scans: dict[Partition, PartitionScan],
    per_state: Mapping[str, pd.Timedelta],
    now: pd.Timestamp,
    damaged: Damaged,
) -> tuple[set[str], list[StateExpiry], dict[str, int]]:
    """uuids whose last row is older than their state's retention; rows per visible file.

    A file that cannot be read is reported to ``damaged`` and left out.
    """
    pieces = []
    paths: list[str] = []
    for partition in partitions:
        for info in scans[partition].visible:
            paths.append(info.path)
    if not paths:
        return set(), [], {}
    for index, path in enumerate(paths):
        frag = PARQUET.make_fragment(path, filesystem=location.fs)
        try:
            cols = frag.to_table(
                schema=TASKS, columns=["uuid", "captured_at", "snapshot_id", "state"]
            )
        except (pa.ArrowException, OSError) as exc:
            if is_missing_file(exc):
                raise
            damaged(path, mark_damaged(location, path, exc))
            continue
        state = cols.column("state")
        if pa.types.is_dictionary(state.type):
            state = state.cast(pa.string())
        pieces.append(
            pa.table(
                {
                    "uuid": cols.column("uuid"),
                    "captured_at": cols.column("captured_at").cast(pa.int64()),
                    "snapshot_id": cols.column("snapshot_id"),
                    "state": state,
                    "file": pa.array(np.full(cols.num_rows, index, np.int32)),
                }
            )
        )
    if not pieces:
        return set(), [], {}
    rows = pa.concat_tables(pieces).to_pandas()
    rows = rows.sort_values(["captured_at", "snapshot_id"], kind="stable")
    last = rows.drop_duplicates("uuid", keep="last")
    known = set(TASK_STATES) | set(last["state"].dropna())
    _check_states(per_state, known)
    # Expired: the last row is older than the retention, i.e. captured before now - retention.
    cutoff_us = last["state"].map({s: to_micros(now - d) for s, d in per_state.items()})
    expired_last = last[last["captured_at"] < cutoff_us.astype("float64")]
    expired = set(expired_last["uuid"])
    expired_rows = rows[rows["uuid"].isin(expired)]
    row_counts = expired_rows.groupby("uuid").size()
    states = []
    for state, group in expired_last.groupby("state"):
        states.append(
            StateExpiry(
                str(state),
                per_state[state],
                tasks=len(group),
                rows=int(row_counts.loc[group["uuid"]].sum()),
            )
        )
    per_file = expired_rows.groupby("file").size()
    return expired, states, {paths[int(i)]: int(n) for i, n in per_file.items()}


def _check_states(per_state: Mapping[str, Any], known: set[str]) -> None:
    for state in sorted(per_state):
        if state not in known:
            close = difflib.get_close_matches(state, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ArchiverError(
                f"unknown task state {state!r}{hint}: states are {', '.join(sorted(known))}"
            )


def _expire_partition_dir(location: Location, partition: Partition) -> None:
    """Drop a partition so that no reader sees part of it.

    Where rename is atomic, rename it aside (invisible at once), then delete it. On
    an object store, write its expiry marker first (readers then hide the hour, see
    :data:`archiver.layout.EXPIRING_PREFIX`), delete its files one by one, then the
    marker: an interrupted run leaves a hidden hour that the next run finishes.
    """
    path = partition.path
    day, name = path.rsplit("/", 1)
    if not location.atomic_rename:
        marker = f"{day}/{expiring_marker(name)}"
        with location.fs.open_output_stream(marker) as out:
            out.write(b"")
        step("marked")
        finish_expiring(location, path, marker)
        return
    aside = f"{day}/.{name}{EXPIRED_MARK}{new_writer_id()}"
    location.rename(path, aside)
    location.fs.delete_dir(aside)
    step("deleted")
    if location.local:
        with contextlib.suppress(OSError):
            os.rmdir(day)  # only if empty: a recorder may be writing there
    location.sync_parents([aside, day])


class _Progress:
    """Counts the steps of a run for the caller's progress callback."""

    def __init__(self, callback: ProgressCallback | None, total: int) -> None:
        self.callback, self.total, self.done = callback, total, 0

    def advance(self) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, self.total)


def _finish_interrupted_runs(location: Location, tables: list[str], note: Damaged) -> None:
    """Finish what crashed runs and recorders left: journaled commits, flushes, hours
    being dropped."""
    repair_locked(location, note)
    recover_flushes(location, min_age=TEMP_MAX_AGE)  # a recorder's, interrupted by a crash
    for table in tables:
        remove_set_aside(location, table)


def _split_by_age(
    archive: Archive, tables: list[str], cutoff: int | None
) -> tuple[list[Partition], dict[str, list[Partition]]]:
    """The partitions ended by ``cutoff`` (to drop), and the others per table."""
    gone: list[Partition] = []
    kept: dict[str, list[Partition]] = {}
    for table in tables:
        for partition in archive.partitions(table):
            if cutoff is not None and partition.ended_by(cutoff):
                gone.append(partition)
            else:
                kept.setdefault(table, []).append(partition)
    return gone, kept


def _drop_partitions(
    location: Location, partitions: list[Partition], wall: float, dry_run: bool, progress: _Progress
) -> list[PartitionExpiry]:
    """Drop whole hours (or, for a dry run, only report them)."""
    gone = []
    for partition in partitions:
        scan = scan_partition(location, partition, wall=wall)  # damaged files go with the hour
        files = scan.visible + scan.damaged
        gone.append(
            PartitionExpiry(
                partition.table,
                partition.date,
                partition.hour,
                files=len(files),
                rows=sum(scan.num_rows(i) for i in scan.visible),
                bytes=sum(i.size for i in files),
            )
        )
        if not dry_run:
            _expire_partition_dir(location, partition)
        progress.advance()
    return gone


def _scan_tasks(
    location: Location, partitions: list[Partition], note: Damaged, wall: float, dry_run: bool
) -> dict[Partition, PartitionScan]:
    """Scan the kept task hours, finishing interrupted runs first (unless a dry run)."""
    scans = {}
    for partition in partitions:
        scan = scan_partition(location, partition, note, wall=wall)
        if not dry_run and (scan.leftovers or scan.temps):
            finish_interrupted(location, partition, scan)
            scan = scan_partition(location, partition, note, wall=wall)
        scans[partition] = scan
    return scans


def _rewrite_without(
    location: Location,
    partition: Partition,
    scan: PartitionScan,
    uuids: set[str],
    per_file: dict[str, int],
    note: Damaged,
    target_bytes: int,
    deletes: DeferredDeletes,
) -> bool:
    """Rewrite the files of ``partition`` holding expired tasks without them.

    The inputs replaced are left to ``deletes``. Returns whether anything was rewritten.
    """
    files = [i for i in scan.visible if i.path in per_file]
    data, schema, good = read_inputs(location, "tasks", [i.path for i in files], note)
    readable = set(good)
    files = [i for i in files if i.path in readable]
    if not files:
        return False
    keep_mask = pc.invert(pc.is_in(data.column("uuid"), pa.array(sorted(uuids))))
    data = sort_rows(data.filter(keep_mask))
    infos = [scan.infos.get(i.base_name) for i in files]
    latest = all(i is not None and i.keep == "latest" for i in infos)
    bytes_in = sum(i.size for i in files)
    outs = write_group(
        location,
        partition.path,
        data,
        schema,
        replaces=[i.base_name for i in files],
        keep="latest" if latest else "all",
        target_bytes=target_bytes,
        slice_rows=rows_per_group(target_bytes, bytes_in, len(data)),
        before_commit=deletes.before_commit,
    )
    tombstones = [o.final for o in outs if o.rows == 0]
    deletes.committed(outs[0].group, [i.path for i in files], tombstones)
    return True


def _expire_by_state(
    location: Location,
    partitions: list[Partition],
    per_state: Mapping[str, pd.Timedelta],
    now: pd.Timestamp,
    *,
    wall: float,
    dry_run: bool,
    note: Damaged,
    progress: _Progress,
    target_bytes: int,
    grace: float,
) -> tuple[set[str], list[StateExpiry], int]:
    """Drop the tasks whose last row is older than their state's retention.

    Returns the expired uuids, the per-state counts and how many hours were rewritten.
    Each rewrite is a commit like a compaction's: its inputs go ``grace`` seconds
    after it, before the next rewrite commits, and a 0-row result (a tombstone) one
    grace later still.
    """
    if not partitions:
        _check_states(per_state, set(TASK_STATES))
        return set(), [], 0
    scans = _scan_tasks(location, partitions, note, wall, dry_run)
    uuids, states, per_file = _expired_tasks(location, partitions, scans, per_state, now, note)
    affected = [p for p in partitions if any(i.path in per_file for i in scans[p].visible)]
    progress.total += len(affected)
    if dry_run:
        return uuids, states, 0
    rewritten = 0
    deletes = DeferredDeletes(location, grace)
    # Oldest first: a task's last row, which decides its state, goes last.
    for partition in affected:
        if _rewrite_without(
            location, partition, scans[partition], uuids, per_file, note, target_bytes, deletes
        ):
            rewritten += 1
            progress.advance()
    deletes.finish()
    return uuids, states, rewritten


def expire_locked(
    archive: Archive,
    tables: list[str],
    *,
    older_than: pd.Timedelta | None,
    per_state: Mapping[str, pd.Timedelta],
    now: pd.Timestamp,
    dry_run: bool,
    progress: ProgressCallback | None,
    target_bytes: int = DEFAULT_TARGET_FILE_BYTES,
    grace: float = DEFAULT_GRACE,
) -> ExpiryReport:
    """Expire old hours of ``tables`` and tasks by state (the caller holds the lock)."""
    started = time.perf_counter()
    location = archive.location
    wall = time.time()
    skipped: dict[str, str] = {}

    def note(path: str, reason: str) -> None:
        skipped.setdefault(path, reason)

    archive = archive.using(note)
    if not dry_run:
        _finish_interrupted_runs(location, tables, note)
    cutoff = None if older_than is None else to_micros(now - older_than)
    gone_parts, kept = _split_by_age(archive, tables, cutoff)
    counter = _Progress(progress, len(gone_parts))
    gone = _drop_partitions(location, gone_parts, wall, dry_run, counter)
    uuids: set[str] = set()
    states: list[StateExpiry] = []
    rewritten = 0
    if per_state:
        uuids, states, rewritten = _expire_by_state(
            location,
            kept.get("tasks", []),
            per_state,
            now,
            wall=wall,
            dry_run=dry_run,
            note=note,
            progress=counter,
            target_bytes=target_bytes,
            grace=grace,
        )
    return ExpiryReport(
        now=now,
        dry_run=dry_run,
        partitions=tuple(gone),
        states=tuple(sorted(states, key=lambda s: s.state)),
        uuids=tuple(sorted(uuids)),
        rewritten=rewritten,
        seconds=time.perf_counter() - started,
        skipped=tuple(sorted(skipped.items())),
    )
