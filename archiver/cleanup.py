"""Compaction and expiry that never lose a row and never show one twice.

Design
======

Every change to the files of a partition is one *commit*, made by renames only.
A maintenance run holds the archive's lock (:mod:`archiver.lock`) and, for each
partition it changes:

1. reads the input files (the visible files it chose, listed by name);
2. writes their rows (sorted by ``captured_at``; for expiry, without the expired
   tasks) as one or more new files under hidden temporary names
   (``.part-...-compact-<group>-NNN.parquet.tmp``). Each new file records in its
   Parquet metadata ``archiver.replaces``, the inputs' names, and
   ``archiver.group``, the names of all the files written together;
3. renames the new files into place, one by one;
4. once every partition is done, deletes the inputs.

Readers (:meth:`archiver.Archive.partition_files`) decide what is visible from a
directory listing alone:

* names starting with ``.`` or ``_`` are never read (temporary and foreign files);
* a compacted file is *live* when all of its group is present, or when none of
  the files it replaces is left (later, one member of a group may itself be
  compacted away; the others stay live);
* a file replaced by a live compacted file is not read.

So before step 3 completes a reader sees exactly the inputs (a half-renamed group
is ignored), after it exactly the new files (the inputs are hidden even while they
still exist), and a ``kill -9`` anywhere leaves one of these two states. The next
run *finishes the job* first, under the lock, before planning anything: it
deletes the files of a half-renamed group (garbage: their rows are still in the
inputs; this must come first, since with its inputs gone such a group would count
as live), then the inputs of a committed one, then empty tombstones, then
archiver's own temporary files older than an hour (``.part-*.tmp``) and
partition directories renamed aside by an interrupted expiry. Files it did not
list (a recorder's new file in the same partition) are never touched: only named
inputs are deleted. Foreign files (``_SUCCESS``, ``.crc``, other ``.tmp``) are
left alone.

A reader that listed the files just before step 4 may find an input gone;
:meth:`archiver.Archive.read` then lists again and rereads, and gets the new
files. Deleting all inputs at the end keeps that window short.

Compaction only touches *closed* partitions: hours that ended before ``before``
(default: now). Files near the target size are left alone, so a second run does
nothing. Expiry of whole partitions renames the hour directory aside
(``.hour=H.expired-<id>``, invisible) and then deletes it; expiry of tasks by
state rewrites the partitions holding their rows, oldest first, so that a task's
last row (which decides its state) goes last: an interrupted expiry never leaves
a task looking younger or in another state, and the next run removes the rest.
When every row of a partition's inputs expires, the commit is a 0-row
"tombstone" file that replaces them; it is deleted once its inputs are gone.

Damaged files (unreadable, failing their page checksums, or of a foreign schema)
and folders that are not ``date=/hour=`` partitions are never inputs: a run leaves
them exactly where they are, does everything else, and lists them in its report's
``skipped`` (``archiver check --quarantine`` moves them aside). A failed write (a
full disk) stops the run with one :class:`~archiver.errors.ArchiverError` line.

On object stores (no atomic rename) the new files are written under their final
names; an upload becomes visible only when complete, so the same rules hold.

Limits: a partition (one hour of one table) is merged in memory. The lock is an
``fcntl.flock``: it serializes cleanups on one host (and on network filesystems
only as far as their ``flock`` does; for a remote archive the lock file is local).
If a recorder writes a new row for a task at the moment expiry removes it, only
the new row remains.

Layout
======

This module is the public API: :func:`compact`, :func:`expire` and
:func:`run_retention` open the archive and take the lock; the work is done in
:mod:`archiver.maintenance`: :mod:`~archiver.maintenance.listing` (what a run sees,
finishing interrupted runs), :mod:`~archiver.maintenance.rewrite` (reading inputs,
writing commit groups), :mod:`~archiver.maintenance.compaction`,
:mod:`~archiver.maintenance.expiry`, :mod:`~archiver.maintenance.retention`
(settings and their parsing) and :mod:`~archiver.maintenance.reports`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import pandas as pd

from .archive import Archive, one_line
from .errors import ArchiverError, NoArchiveError
from .lock import MaintenanceLock
from .maintenance.compaction import compact_locked
from .maintenance.expiry import expire_locked
from .maintenance.listing import scan_partition as _scan  # noqa: F401  (used by tests)
from .maintenance.listing import to_micros
from .maintenance.reports import (
    CleanupReport,
    CompactionReport,
    ExpiryReport,
    PartitionCompaction,
    PartitionExpiry,
    Progress,
    StateExpiry,
)
from .maintenance.retention import (
    DEFAULT_TARGET_FILE_BYTES,
    Keep,
    Retention,
    check_keep,
    parse_per_state,
    parse_size,
)
from .maintenance.rewrite import latest_rows
from .schema import TASK_STATES  # noqa: F401  (re-exported)
from .storage import Location
from .timeparse import parse_duration, parse_time

logger = logging.getLogger("archiver.cleanup")

#: Seconds to wait for another cleanup by default (``run_retention`` does not wait).
DEFAULT_LOCK_TIMEOUT = 10.0
#: Test hook: called with a step name ("written", "renamed", "deleted") after each file.
#: Looked up here at each step (:func:`archiver.maintenance.listing.step`), so tests
#: set or monkeypatch ``cleanup._STEP_HOOK``.
_STEP_HOOK: Callable[[str], None] | None = None


@contextlib.contextmanager
def _io_errors(what: str) -> Iterator[None]:
    """A failed write or delete (a full disk, a read-only folder) as a one-line error."""
    try:
        yield
    except ArchiverError:
        raise
    except OSError as exc:
        raise ArchiverError(f"{what} stopped: {one_line(exc)}") from exc


def _now(now: Any = None) -> pd.Timestamp:
    wall = pd.Timestamp(time.time(), unit="s", tz="UTC")
    return wall if now is None else parse_time(now, now=wall)


def _open(archive: Archive | Location | str | os.PathLike[str]) -> Archive:
    if isinstance(archive, Archive):
        result = archive
    elif isinstance(archive, Location):
        result = Archive(archive.root, filesystem=archive.fs)
        result.uri = archive.uri
    else:
        result = Archive(archive)
    if not result.exists():
        raise NoArchiveError(
            f"no archive at {result.uri}: record one with `archiver record --archive {result.uri}`"
        )
    return result


def _tables(archive: Archive, tables: str | Iterable[str] | None) -> list[str]:
    known = archive.tables()
    if tables is None:
        return known
    names = [tables] if isinstance(tables, str) else list(tables)
    for name in names:
        if name not in known:
            raise ArchiverError(
                f"unknown table {name!r} in archive {archive.uri}: "
                f"tables are {', '.join(known) or 'none'}"
            )
    return names


def compact(
    archive: Archive | Location | str | os.PathLike[str],
    *,
    tables: str | Iterable[str] | None = None,
    before: Any = None,
    target_file_bytes: int | str = DEFAULT_TARGET_FILE_BYTES,
    keep: Keep = "all",
    dry_run: bool = False,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    progress: Progress | None = None,
) -> CompactionReport:
    """Merge the small files of each closed partition into as few files as the target allows.

    Idempotent: a second run does nothing. Safe to run while a camera records and
    readers load (see the module docstring); a ``kill -9`` at any point loses and
    duplicates nothing, and the next run finishes the job.

    Args:
        archive: an :class:`~archiver.Archive`, a path or a URI.
        tables: the tables to compact (default: all).
        before: compact only the hours that ended by then (default: now); a time,
            epoch seconds, an ISO string, or a duration ago such as ``"2h"``.
        target_file_bytes: size of the merged files (an int or ``"128MiB"``); files
            of at least 3/4 of it are left alone.
        keep: ``"latest"`` also keeps only the last row of each task (uuid) and
            worker (hostname) per partition.
        dry_run: only report what would be merged (``files_out`` is a bound).
        lock_timeout: seconds to wait for another cleanup before raising
            :class:`~archiver.errors.LockedError`.
        progress: called as ``progress(done, total)`` after each closed partition.

    Returns:
        A :class:`CompactionReport`.

    Example:
        >>> archiver.Archive("data/archive").compact(before="1h")  # doctest: +SKIP
    """
    arch = _open(archive)
    names = _tables(arch, tables)
    keep = check_keep(keep)
    target = parse_size(target_file_bytes)
    before_us = to_micros(_now(before))
    run = compact_locked
    kwargs = dict(
        before_us=before_us, target_bytes=target, keep=keep, dry_run=dry_run, progress=progress
    )
    with _io_errors("compact"):
        if dry_run:
            return run(arch, names, **kwargs)
        with MaintenanceLock(arch.location, timeout=lock_timeout, purpose="compact"):
            return run(arch, names, **kwargs)


# -- expiry --------------------------------------------------------------------
def expire(
    archive: Archive | Location | str | os.PathLike[str],
    *,
    older_than: Any = None,
    per_state: Mapping[str, Any] | Iterable[str] | None = None,
    now: Any = None,
    dry_run: bool = True,
    tables: str | Iterable[str] | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    progress: Progress | None = None,
) -> ExpiryReport:
    """Drop partitions older than ``older_than`` and tasks expired by state; a dry run by default.

    A task expires when its *last* row across the archive is older than the
    retention of that row's state; then all of its rows go, so a long-running
    task is never cut in half. States without a retention never expire by state.

    Args:
        archive: an :class:`~archiver.Archive`, a path or a URI.
        older_than: drop whole partitions (every table) whose hour ended longer
            ago than this, e.g. ``"30d"``.
        per_state: ``{"SUCCESS": "1d", "FAILURE": "7d", ...}`` (or ``["SUCCESS=1d"]``).
        now: the time ages are measured from (default: now).
        dry_run: only report what would go (the default).
        tables: the tables whose old partitions go (default: all).
        lock_timeout: seconds to wait for another cleanup (not taken in a dry run).
        progress: called as ``progress(done, total)`` after each partition.

    Returns:
        An :class:`ExpiryReport` (``dry_run`` tells whether anything was deleted).

    Example:
        >>> report = archiver.Archive("data/archive").expire(older_than="30d")  # doctest: +SKIP
        >>> report.partitions  # what would go  # doctest: +SKIP
    """
    arch = _open(archive)
    names = _tables(arch, tables)
    delta = None if older_than is None else parse_duration(older_than, what="older_than")
    states = parse_per_state(per_state)
    at = _now(now)
    kwargs = dict(older_than=delta, per_state=states, now=at, dry_run=dry_run, progress=progress)
    with _io_errors("expire"):
        if dry_run:
            return expire_locked(arch, names, **kwargs)
        with MaintenanceLock(arch.location, timeout=lock_timeout, purpose="expire"):
            return expire_locked(arch, names, **kwargs)


# -- both ------------------------------------------------------------------------
def run_retention(
    archive: Archive | Location | str | os.PathLike[str],
    retention: Retention | Mapping[str, Any] | str | os.PathLike[str],
    *,
    now: Any = None,
    dry_run: bool = False,
    expire_dry_run: bool | None = None,
    lock_timeout: float = 0.0,
    progress: Progress | None = None,
) -> CleanupReport:
    """Expire, then compact, as ``retention`` says, under one lock.

    Used by :meth:`archiver.ParquetCamera.on_cleanup` (which logs the report) and
    ``archiver cleanup``. By default it does not wait for another cleanup: it
    raises :class:`~archiver.errors.LockedError` and the next period tries again.

    Args:
        archive: an :class:`~archiver.Archive`, a :class:`~archiver.storage.Location`,
            a path or a URI.
        retention: a :class:`Retention`, a mapping of its fields, or a retention file.
        now: the time ages are measured from, and the end of the closed hours.
        dry_run: report only, change nothing.
        expire_dry_run: report expiry only (default: ``dry_run``).
        lock_timeout: seconds to wait for another cleanup.
        progress: called as ``progress(done, total)`` after each partition.
    """
    started = time.perf_counter()
    policy = Retention.coerce(retention)
    arch = _open(archive)
    names = _tables(arch, policy.tables)
    at = _now(now)
    expire_dry = dry_run if expire_dry_run is None else expire_dry_run or dry_run
    lock = None
    if not dry_run:
        lock = MaintenanceLock(arch.location, timeout=lock_timeout, purpose="cleanup")
        lock.acquire()
    try:
        with _io_errors("cleanup"):
            expiry = None
            if policy.older_than is not None or policy.per_state:
                expiry = expire_locked(
                    arch,
                    names,
                    older_than=policy.older_than,
                    per_state=policy.per_state,
                    now=at,
                    dry_run=expire_dry,
                    progress=progress,
                    target_bytes=policy.target_file_bytes,
                )
            compaction = None
            if policy.compact:
                compaction = compact_locked(
                    arch,
                    names,
                    before_us=to_micros(at),
                    target_bytes=policy.target_file_bytes,
                    keep=policy.keep,
                    dry_run=dry_run,
                    progress=progress,
                )
    finally:
        if lock is not None:
            lock.release()
    return CleanupReport(expiry, compaction, seconds=time.perf_counter() - started)


__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_TARGET_FILE_BYTES",
    "CleanupReport",
    "CompactionReport",
    "ExpiryReport",
    "Keep",
    "PartitionCompaction",
    "PartitionExpiry",
    "Progress",
    "Retention",
    "StateExpiry",
    "compact",
    "expire",
    "latest_rows",
    "parse_duration",
    "parse_per_state",
    "parse_size",
    "run_retention",
]
