"""A run's file steps (with the test hook), and finishing interrupted runs.

See :mod:`archiver.maintenance` for the protocol: which leftovers of an
interrupted run are deleted, in which order. What a partition holds is listed by
:func:`archiver.listing.scan_partition`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pyarrow.fs as pafs

from ..layout import Partition
from ..listing import PartitionScan, walk_partitions
from ..storage import Location

#: Test hook: called with a step name ("written", "renamed", "deleted") after each
#: file step; tests set or monkeypatch ``archiver.maintenance.recovery._STEP_HOOK``.
_STEP_HOOK: Callable[[str], None] | None = None


def step(name: str) -> None:
    """Call the test hook :data:`_STEP_HOOK`, if set, after a file step."""
    if _STEP_HOOK is not None:
        _STEP_HOOK(name)


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
    """Finish interrupted expiries: hours renamed aside, or marked (object stores)."""
    walk = walk_partitions(location, table)
    for path in walk.set_aside:
        location.fs.delete_dir(path)
    for path, marker in walk.expiring:
        finish_expiring(location, path, marker)
    return len(walk.set_aside) + len(walk.expiring)


def finish_expiring(location: Location, path: str, marker: str) -> None:
    """Delete an hour marked as being expired, file by file, then its marker.

    One delete per file (object stores have no directory to delete), each a step.
    """
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    for info in location.fs.get_file_info(selector):
        if info.type == pafs.FileType.File:
            delete_file(location, info.path)
    delete_file(location, marker)
