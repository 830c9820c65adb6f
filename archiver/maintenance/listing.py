"""A partition's files as a maintenance run sees them; finishing interrupted runs.

See :mod:`archiver.cleanup` for the protocol: which files are visible, and which
leftovers of an interrupted run are deleted, in which order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from ..archive import (
    COMPACT_MARK,
    CompactInfo,
    Partition,
    _is_missing_file,
    all_facts,
    is_hidden,
    live_compacted,
    mark_damaged,
    parse_date,
    read_fully,
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
    #: Damaged files (unreadable footer or foreign schema): left alone, never an input.
    damaged: list[pafs.FileInfo] = field(default_factory=list)
    #: Rows of each readable visible file, from its footer.
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def leftovers(self) -> list[str]:
        return self.garbage + self.replaced + self.tombstones


#: Called as ``damaged(path, reason)`` for each damaged file a run skips.
Damaged = Callable[[str, str], None]


def scan_partition(
    location: Location, partition: Partition, wall: float, damaged: Damaged | None = None
) -> PartitionScan:
    """List a partition; damaged files are reported to ``damaged`` and left out of it."""
    try:
        entries = location.fs.get_file_info(pafs.FileSelector(partition.path))
    except FileNotFoundError:
        return PartitionScan()
    scan = PartitionScan()
    for e in entries:
        name = e.base_name
        if e.type != pafs.FileType.File:
            if damaged is not None and name.endswith(".parquet") and not is_hidden(name):
                damaged(e.path, "not a file")
            continue
        if name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX):
            if e.mtime is not None and wall - e.mtime.timestamp() > TEMP_MAX_AGE:
                scan.temps.append(e.path)
        elif not is_hidden(name) and name.endswith(".parquet"):
            scan.files[name] = e
    entries = list(scan.files.values())
    problems: dict[str, str] = {}
    broken: dict[str, str] = {}  # merged files whose footer reads and a page does not
    for e, facts in zip(entries, all_facts(location, entries, partition.table)):
        if facts is None:  # vanished
            del scan.files[e.base_name]
        elif facts.problem is not None and facts.compact is not None:
            scan.infos[e.base_name] = facts.compact
            broken[e.base_name] = facts.problem
        elif facts.problem is not None:
            problems[e.base_name] = facts.problem
            if COMPACT_MARK in e.base_name:  # a damaged compacted file replaces nothing
                del scan.files[e.base_name]
        elif facts.compact is not None:
            scan.infos[e.base_name] = facts.compact
        else:
            scan.rows[e.base_name] = facts.rows
    broken.update(_damaged_commits(location, scan, broken))
    # A damaged merged file replaces nothing. With all its inputs there (they hold its
    # rows) its group is garbage, deleted; else it is kept as a damaged file.
    infos = {name: (scan.files.pop(name), scan.infos[name]) for name in broken}
    for name, (info, compact) in infos.items():
        if compact.replaces and compact.replaces <= set(scan.files):
            if damaged is not None:
                damaged(info.path, f"{broken[name]} (a merged file: removed, its inputs kept)")
        else:
            problems[name] = broken[name]
            del scan.infos[name]
    present = set(scan.files)
    live = live_compacted(present, scan.infos)
    visible = visible_names(present, scan.infos)
    # (only a group whose inputs are all there is garbage: its rows are in them)
    scan.garbage = sorted(
        n for n in scan.infos if n not in live and scan.infos[n].replaces <= present
    )
    scan.replaced = sorted(n for n in present - visible if n in live or n not in scan.infos)
    scan.tombstones = sorted(
        n for n in live & visible if scan.infos[n].rows == 0 and scan.infos[n].group == {n}
    )
    for name, problem in sorted(problems.items()):
        if name in visible or name not in present:  # damaged and not a replaced leftover
            info = scan.files.get(name) or next(e for e in entries if e.base_name == name)
            scan.damaged.append(info)
            if damaged is not None:
                damaged(info.path, problem)
    bad = {i.base_name for i in scan.damaged}
    scan.visible = sorted(
        (scan.files[n] for n in visible if n not in bad), key=lambda i: i.base_name
    )
    return scan


def _damaged_commits(
    location: Location, scan: PartitionScan, known: dict[str, str]
) -> dict[str, str]:
    """The live compacted files (not ``known`` damaged) whose inputs are still there,
    to be deleted, that fail a full read verifying every page; and why."""
    present = set(scan.files)
    found: dict[str, str] = {}
    for name in sorted(live_compacted(present, scan.infos)):
        if name in known or not scan.infos[name].replaces & present:
            continue
        path = scan.files[name].path
        try:
            read_fully(location.fs, path)
        except (OSError, pa.ArrowException, ValueError) as exc:
            if not _is_missing_file(exc):
                found[name] = mark_damaged(location, path, exc)
    return found


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
        if day.type != pafs.FileType.Directory or parse_date(day.base_name) is None:
            continue
        for entry in location.fs.get_file_info(pafs.FileSelector(day.path)):
            if entry.type == pafs.FileType.Directory and EXPIRED_MARK in entry.base_name:
                location.fs.delete_dir(entry.path)
                removed += 1
    return removed


def num_rows(scan: PartitionScan, info: pafs.FileInfo) -> int:
    """Rows of a visible file of ``scan``, from its footer."""
    compact = scan.infos.get(info.base_name)
    return compact.rows if compact is not None else scan.rows[info.base_name]
