"""A run's file steps (with the test hook), and finishing interrupted runs.

See :mod:`archiver.maintenance` for the protocol: which leftovers of an
interrupted run are deleted, in which order. What a partition holds is listed by
:func:`archiver.listing.scan_partition`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

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
    """Delete partition directories renamed aside by an interrupted expiry."""
    paths = walk_partitions(location, table).set_aside
    for path in paths:
        location.fs.delete_dir(path)
    return len(paths)
