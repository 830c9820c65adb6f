"""A partition's files as a maintenance run sees them; finishing interrupted runs.

See :mod:`archiver.cleanup` for the protocol: which files are visible, and which
leftovers of an interrupted run are deleted, in which order.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..archive import (
    COMPACT_MARK,
    CompactInfo,
    Partition,
    compact_info,
    is_hidden,
    live_compacted,
    visible_names,
)
from ..sink import TMP_PREFIX, TMP_SUFFIX
from ..storage import Location

#: archiver's own temporary files older than this (seconds) are removed.
TEMP_MAX_AGE = 3600.0
#: Marks a partition directory renamed aside by expiry (``.hour=H.expired-<id>``).
EXPIRED_MARK = ".expired-"


def step(name: str) -> None:
    """Call the test hook ``archiver.cleanup._STEP_HOOK``, if set, after a file step."""
    from .. import cleanup  # the hook lives on the facade, where tests set it

    if cleanup._STEP_HOOK is not None:
        cleanup._STEP_HOOK(name)


def to_micros(ts: pd.Timestamp) -> int:
    """Epoch microseconds, the unit of partition bounds (``Partition.start_us``)."""
    return int(ts.value // 1000)


@dataclass
class PartitionScan:
    """One partition's files, as a maintenance run sees them."""

    files: dict[str, pafs.FileInfo] = field(default_factory=dict)
    infos: dict[str, CompactInfo] = field(default_factory=dict)
    visible: list[pafs.FileInfo] = field(default_factory=list)
    #: Leftovers of interrupted runs, in the order they must be deleted.
    garbage: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    tombstones: list[str] = field(default_factory=list)
    temps: list[str] = field(default_factory=list)

    @property
    def leftovers(self) -> list[str]:
        return self.garbage + self.replaced + self.tombstones


def scan_partition(location: Location, partition: Partition, wall: float) -> PartitionScan:
    try:
        entries = location.fs.get_file_info(pafs.FileSelector(partition.path))
    except FileNotFoundError:
        return PartitionScan()
    scan = PartitionScan()
    for e in entries:
        if e.type != pafs.FileType.File:
            continue
        name = e.base_name
        if name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX):
            if e.mtime is not None and wall - e.mtime.timestamp() > TEMP_MAX_AGE:
                scan.temps.append(e.path)
        elif not is_hidden(name) and name.endswith(".parquet"):
            scan.files[name] = e
    for name, e in scan.files.items():
        if COMPACT_MARK in name:
            scan.infos[name] = compact_info(location, e)
    present = set(scan.files)
    live = live_compacted(present, scan.infos)
    visible = visible_names(present, scan.infos)
    scan.visible = sorted((scan.files[n] for n in visible), key=lambda i: i.base_name)
    scan.garbage = sorted(n for n in scan.infos if n not in live)
    scan.replaced = sorted(n for n in present - visible if n in live or n not in scan.infos)
    scan.tombstones = sorted(
        n for n in live & visible if scan.infos[n].rows == 0 and scan.infos[n].group == {n}
    )
    return scan


def delete_file(location: Location, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        location.fs.delete_file(path)
    step("deleted")


def finish_interrupted(
    location: Location, partition: Partition, scan: PartitionScan
) -> tuple[int, int]:
    """Delete the leftovers of interrupted runs (in order) and stale temps."""
    for name in scan.leftovers:
        delete_file(location, f"{partition.path}/{name}")
    for path in scan.temps:
        delete_file(location, path)
    return len(scan.leftovers), len(scan.temps)


def remove_set_aside(location: Location, table: str) -> int:
    """Delete partition directories renamed aside by an interrupted expiry."""
    removed = 0
    root = location.join(table)
    try:
        days = location.fs.get_file_info(pafs.FileSelector(root))
    except FileNotFoundError:
        return 0
    for day in days:
        if day.type != pafs.FileType.Directory or not day.base_name.startswith("date="):
            continue
        for entry in location.fs.get_file_info(pafs.FileSelector(day.path)):
            if entry.type == pafs.FileType.Directory and EXPIRED_MARK in entry.base_name:
                location.fs.delete_dir(entry.path)
                removed += 1
    return removed


def num_rows(location: Location, info: pafs.FileInfo) -> int:
    with location.fs.open_input_file(info.path) as f:
        return pq.ParquetFile(f).metadata.num_rows
