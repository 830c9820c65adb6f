"""A run's file steps (with the test hook), and finishing interrupted runs.

See :mod:`archiver.maintenance` for the protocol: which leftovers of an
interrupted run are deleted, in which order. What a partition holds is listed by
:func:`archiver.listing.scan_partition`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs

from ..errors import ArchiverError, LockedError
from ..layout import JOURNAL, Partition, parse_partition
from ..listing import (
    TEMP_MAX_AGE,
    Damaged,
    PartitionScan,
    list_dir,
    scan_partition,
    walk_partitions,
)
from ..storage import Location
from .lock import MaintenanceLock

logger = logging.getLogger(__name__)

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


def delete_inputs(location: Location, paths: Iterable[str]) -> None:
    """Delete the files ``paths`` (a committed group's inputs), then sync their folders."""
    done = list(paths)
    for path in done:
        delete_file(location, path)
    location.sync_parents(done)


@dataclass
class _Committed:
    group: str
    at: float  # time.monotonic() of the commit
    inputs: list[str]
    tombstones: list[str]


class DeferredDeletes:
    """Deletes a committed group's inputs ``grace`` seconds after its commit, before the next.

    Why not at once: a glob reader (DuckDB over ``*/*/*.parquet``) that listed an input
    just before its delete fails with "No such file"; archiver's readers ignore the
    inputs from the commit on. Why not later: until they go, a glob reader sees the
    group's rows twice, so at most one group is pending: :meth:`before_commit` (called
    by the next group just before its first rename) deletes it, waiting out the rest
    of its grace. A 0-row output (an expiry's tombstone) is deleted in turn one grace
    after its inputs. A crash leaves the group journaled: :func:`repair` finishes it.
    """

    def __init__(self, location: Location, grace: float) -> None:
        self.location = location
        self.grace = grace
        self._group: _Committed | None = None
        self._tombstones: list[tuple[float, list[str]]] = []

    def committed(self, group: str, inputs: list[str], tombstones: list[str]) -> None:
        """Note a group just committed (its journal entry is closed once its inputs go)."""
        self.before_commit()  # a no-op for a caller that already called it
        self._group = _Committed(group, time.monotonic(), inputs, tombstones)
        if self.grace <= 0:
            self.before_commit()

    def before_commit(self) -> None:
        """Delete the pending group's inputs, once its grace is over."""
        pending, self._group = self._group, None
        if pending is None:
            return
        self._wait(pending.at)
        delete_inputs(self.location, pending.inputs)
        close_commit(self.location, pending.group)
        if pending.tombstones:
            self._tombstones.append((time.monotonic(), pending.tombstones))
        self._delete_tombstones(wait=self.grace <= 0)

    def finish(self) -> None:
        """Delete everything pending (the end of a run), waiting out the graces."""
        self.before_commit()
        self._delete_tombstones(wait=True)

    def _wait(self, since: float) -> None:
        rest = since + self.grace - time.monotonic()
        if rest > 0:
            time.sleep(rest)

    def _delete_tombstones(self, *, wait: bool) -> None:
        now = time.monotonic()
        while self._tombstones and (wait or self._tombstones[0][0] + self.grace <= now):
            at, paths = self._tombstones.pop(0)
            self._wait(at)
            delete_inputs(self.location, paths)


# -- the commit journal --------------------------------------------------------------
def journal_entry(location: Location, group: str) -> str:
    return location.join(JOURNAL, group)


def open_commit(location: Location, group: str, directory: str) -> None:
    """Journal a commit of ``group`` into the partition ``directory``, before its renames.

    The entry lets the next archiver process that opens the archive to write find
    a half-done commit without listing every partition (:func:`repair`). It holds
    the partition and, on a second line, the host (whose lock tells if it is done).
    """
    entry = journal_entry(location, group)
    if location.atomic_rename:  # object stores have no folders (and get no markers)
        location.make_dirs(entry.rsplit("/", 1)[0])
    relative = directory[len(location.root) :].strip("/") if location.root else directory
    with location.fs.open_output_stream(entry) as out:
        out.write(f"{relative}\n{socket.gethostname()}".encode())
    location.sync(entry)


def close_commit(location: Location, group: str) -> None:
    """Drop the journal entry of ``group``: its inputs are gone."""
    with contextlib.suppress(FileNotFoundError):
        location.fs.delete_file(journal_entry(location, group))


def repair(location: Location, damaged: Damaged | None = None) -> int:
    """Finish the commits the journal lists as half-done; the number of files deleted.

    Run by every process that opens the archive to write (a recorder starting, a
    cleanup). Costs one listing of the journal when nothing is pending, then one
    partition listing per entry. Skipped (0) while a cleanup holds the lock on this
    host: that cleanup finishes the job itself.
    """
    try:
        if not _journal(location):
            return 0
        with MaintenanceLock(location, timeout=0.0, purpose="repair"):
            return repair_locked(location, damaged)
    except LockedError:
        return 0
    except (OSError, ArchiverError, pa.ArrowException, ValueError) as exc:  # writes will tell
        logger.warning("Could not finish interrupted commits in %s: %s", location.uri, exc)
        return 0


def repair_locked(location: Location, damaged: Damaged | None = None) -> int:
    """:func:`repair`, for a caller that holds the lock."""
    return sum(_repair_entry(location, info, damaged) for info in _journal(location))


def _journal(location: Location) -> list[pafs.FileInfo]:
    entries = list_dir(location, location.join(JOURNAL))
    return [i for i in entries if i.type == pafs.FileType.File]


def _repair_entry(location: Location, info: pafs.FileInfo, damaged: Damaged | None) -> int:
    """Finish the commit of one journal entry, then drop the entry."""
    try:
        with location.fs.open_input_stream(info.path) as f:
            text = f.read(4096).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return 0
    lines = text.splitlines() or [""]
    parsed = parse_partition(lines[0])
    host = lines[1].strip() if len(lines) > 1 else socket.gethostname()
    age = time.time() - info.mtime.timestamp() if info.mtime is not None else TEMP_MAX_AGE
    if host != socket.gethostname() and age < TEMP_MAX_AGE:
        # Our lock says nothing of another host's cleanup: it may still be renaming
        # this group, so its half-renamed files are not garbage yet.
        return 0
    if parsed is None:
        if damaged is not None:
            damaged(info.path, "not a commit journal entry (table/date=YYYY-MM-DD/hour=H)")
        return 0
    table, day, hour = parsed
    partition = Partition(table, day, hour, location.join(table, f"date={day}", f"hour={hour}"))
    scan = scan_partition(location, partition, damaged, wall=time.time())
    removed = len(scan.leftovers)
    for name in scan.leftovers:
        delete_file(location, f"{partition.path}/{name}")
    location.sync_parents(f"{partition.path}/{n}" for n in scan.leftovers)
    with contextlib.suppress(FileNotFoundError):
        location.fs.delete_file(info.path)
    return removed


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
