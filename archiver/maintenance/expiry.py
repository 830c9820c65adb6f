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
from ..layout import EXPIRED_MARK, Partition
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
from .recovery import delete_file, finish_interrupted, remove_set_aside, step
from .reports import ExpiryReport, PartitionExpiry, ProgressCallback, StateExpiry
from .retention import DEFAULT_TARGET_FILE_BYTES
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
    """Drop a partition: rename it aside (invisible at once), then delete it."""
    fs = location.fs
    path = partition.path
    if location.atomic_rename:
        parent, name = path.rsplit("/", 1)
        aside = f"{parent}/.{name}{EXPIRED_MARK}{new_writer_id()}"
        location.rename(path, aside)
        path = aside
    fs.delete_dir(path)
    step("deleted")
    day = path.rsplit("/", 1)[0]
    if location.local:
        with contextlib.suppress(OSError):
            os.rmdir(day)  # only if empty: a recorder may be writing there
    location.sync_parents([path, day])


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
) -> ExpiryReport:
    started = time.perf_counter()
    location = archive.location
    wall = time.time()
    skipped: dict[str, str] = {}

    def note(path: str, reason: str) -> None:
        skipped.setdefault(path, reason)

    archive = archive.using(note)
    if not dry_run:
        recover_flushes(location, min_age=TEMP_MAX_AGE)  # a recorder's, interrupted by a crash
        for table in tables:
            remove_set_aside(location, table)
    cutoff = None if older_than is None else to_micros(now - older_than)
    gone: list[PartitionExpiry] = []
    gone_parts: list[Partition] = []
    kept: dict[str, list[Partition]] = {}
    for table in tables:
        for partition in archive.partitions(table):
            if cutoff is not None and partition.ended_by(cutoff):
                gone_parts.append(partition)
            else:
                kept.setdefault(table, []).append(partition)
    total = len(gone_parts)
    done = 0
    for partition in gone_parts:
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
        done += 1
        if progress is not None:
            progress(done, total)

    uuids: set[str] = set()
    states: list[StateExpiry] = []
    rewritten = 0
    task_parts = kept.get("tasks", []) if per_state else []
    if per_state and not task_parts:
        _check_states(per_state, set(TASK_STATES))
    if task_parts:
        scans = {}
        for partition in task_parts:
            scan = scan_partition(location, partition, note, wall=wall)
            if not dry_run and (scan.leftovers or scan.temps):
                finish_interrupted(location, partition, scan)
                scan = scan_partition(location, partition, note, wall=wall)
            scans[partition] = scan
        uuids, states, per_file = _expired_tasks(location, task_parts, scans, per_state, now, note)
        affected = [p for p in task_parts if any(i.path in per_file for i in scans[p].visible)]
        total += len(affected)
        to_delete: list[str] = []
        try:
            # Oldest first: a task's last row, which decides its state, goes last.
            for partition in affected if not dry_run else []:
                files = [i for i in scans[partition].visible if i.path in per_file]
                data, schema, good = read_inputs(location, "tasks", [i.path for i in files], note)
                files = [i for i in files if i.path in set(good)]
                if not files:
                    continue
                keep_mask = pc.invert(pc.is_in(data.column("uuid"), pa.array(sorted(uuids))))
                data = sort_rows(data.filter(keep_mask))
                infos = [scans[partition].infos.get(i.base_name) for i in files]
                latest = all(i is not None and i.keep == "latest" for i in infos)
                bytes_in = sum(i.size for i in files)
                write_group(
                    location,
                    partition.path,
                    data,
                    schema,
                    replaces=[i.base_name for i in files],
                    keep="latest" if latest else "all",
                    target_bytes=target_bytes,
                    slice_rows=rows_per_group(target_bytes, bytes_in, len(data)),
                )
                to_delete.extend(i.path for i in files)
                rewritten += 1
                done += 1
                if progress is not None:
                    progress(done, total)
        finally:
            for path in to_delete:
                delete_file(location, path)
            location.sync_parents(to_delete)
        # The rewrites' inputs are gone: drop the tombstones of fully expired files.
        for partition in affected if not dry_run else []:
            scan = scan_partition(location, partition, wall=wall)
            for name in scan.tombstones:
                delete_file(location, f"{partition.path}/{name}")
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
