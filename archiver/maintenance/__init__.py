"""Compaction and expiry that never lose a row and never show one twice.

Design
======

Every change to the files of a partition is one *commit*, made by renames only.
A maintenance run holds the archive's lock (:mod:`archiver.maintenance.lock`) and, for each
partition it changes:

1. reads the input files (the visible files it chose, listed by name);
2. writes their rows (sorted by ``captured_at``; for expiry, without the expired
   tasks) as one or more new files under hidden temporary names
   (``.part-...-compact-<group>-NNN.parquet.tmp``). Each new file records in its
   Parquet metadata ``archiver.replaces``, the inputs' names, and
   ``archiver.group``, the names of all the files written together;
3. renames the new files into place, one by one (journaled in ``<archive>/_commits``
   from before the first rename until step 4 is done);
4. deletes that partition's inputs ``grace`` seconds after the commit (for glob
   readers that listed them), and before the next partition's step 3.

Readers and maintenance runs alike (:func:`archiver.listing.scan_partition`, with the
rules of :mod:`archiver.layout`) decide what is visible from a directory listing alone:

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
files. Deleting each partition's inputs after a grace but before the next commit
(:class:`~archiver.maintenance.recovery.DeferredDeletes`) keeps a glob reader's
duplicates to one partition at a time, and spares a glob query shorter than the
grace a "No such file"; a recorder starting
finishes a journaled commit a crash left half-done
(:func:`~archiver.maintenance.recovery.repair`). Two groups replacing a same file
(two cleanups racing without a common lock) count once: see
:func:`archiver.layout.overlap_winners`.

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

This package's top is the public API: :func:`compact`, :func:`expire` and
:func:`run_retention` open the archive and take the lock (:mod:`.lock`); the work
is done in :mod:`.recovery` (file steps, finishing interrupted runs),
:mod:`.rewrite` (reading inputs, writing commit groups), :mod:`.compaction`,
:mod:`.expiry`, :mod:`.retention` (settings and their parsing) and :mod:`.reports`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pandas as pd

from ..archive import Archive
from ..errors import ArchiverError, one_line
from ..storage import Location
from ..timeparse import parse_duration, parse_time, to_micros
from .compaction import compact_locked
from .expiry import expire_locked
from .lock import lock_unless
from .reports import (
    CleanupReport,
    CompactionReport,
    ExpiryReport,
    PartitionCompaction,
    PartitionExpiry,
    ProgressCallback,
    StateExpiry,
)
from .retention import (
    DEFAULT_GRACE,
    DEFAULT_TARGET_FILE_BYTES,
    Keep,
    Retention,
    check_keep,
    parse_grace,
    parse_per_state,
    parse_size,
)

#: Seconds to wait for another cleanup by default (``run_retention`` does not wait).
DEFAULT_LOCK_TIMEOUT = 10.0


@contextlib.contextmanager
def _maintaining(arch: Archive, what: str, *, dry_run: bool, lock_timeout: float) -> Iterator[None]:
    """The archive's lock (not taken by a dry run), and a failed write or delete (a
    full disk, a read-only folder) as one line naming ``what`` stopped."""
    with lock_unless(dry_run, arch.location, timeout=lock_timeout, purpose=what):
        try:
            yield
        except ArchiverError:
            raise
        except OSError as exc:
            raise ArchiverError(f"{what} stopped: {one_line(exc)}") from exc


def _now(now: Any = None) -> pd.Timestamp:
    wall = pd.Timestamp(time.time(), unit="s", tz="UTC")
    ts = None if now is None else parse_time(now, now=wall)
    return wall if ts is None else ts  # (parse_time gives None only for None)


def _open(archive: Archive | Location | str | os.PathLike[str], *, write: bool) -> Archive:
    """The archive, checked to be one (and, to change it, writable)."""
    if isinstance(archive, Archive):
        result = archive
    elif isinstance(archive, Location):
        result = Archive.at(archive)
    else:
        result = Archive(archive)
    result.require(write=write)
    return result


def compact(
    archive: Archive | Location | str | os.PathLike[str],
    *,
    tables: str | Iterable[str] | None = None,
    before: Any = None,
    target_file_bytes: int | str = DEFAULT_TARGET_FILE_BYTES,
    keep: Keep = "all",
    dry_run: bool = False,
    allow_deletes: bool = True,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    progress: ProgressCallback | None = None,
    grace: float | str = DEFAULT_GRACE,
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
            worker (hostname) per partition (this deletes rows).
        dry_run: only report what would be merged (``files_out`` is a bound).
        allow_deletes: if False, a run that would delete rows (``keep="latest"``)
            is a dry run.
        lock_timeout: seconds to wait for another cleanup before raising
            :class:`~archiver.errors.LockedError`.
        progress: called as ``progress(done, total)`` after each closed partition.
        grace: seconds (or a duration such as ``"2s"``; 0 allowed) a merged group's
            inputs stay on disk for glob readers, before the next group's commit.

    Returns:
        A :class:`CompactionReport`.

    Example:
        >>> archiver.Archive("data/archive").compact(before="1h")  # doctest: +SKIP
    """
    keep = check_keep(keep)
    dry_run = dry_run or (keep == "latest" and not allow_deletes)
    arch = _open(archive, write=not dry_run)
    names = arch.select_tables(tables)
    target = parse_size(target_file_bytes)
    before_us = to_micros(_now(before))
    seconds = parse_grace(grace)
    with _maintaining(arch, "compact", dry_run=dry_run, lock_timeout=lock_timeout):
        return compact_locked(
            arch,
            names,
            before_us=before_us,
            target_bytes=target,
            keep=keep,
            dry_run=dry_run,
            progress=progress,
            grace=seconds,
        )


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
    progress: ProgressCallback | None = None,
    grace: float | str = DEFAULT_GRACE,
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
        grace: as for :func:`compact`, for the files a rewrite replaces.

    Returns:
        An :class:`ExpiryReport` (``dry_run`` tells whether anything was deleted).

    Example:
        >>> report = archiver.Archive("data/archive").expire(older_than="30d")  # doctest: +SKIP
        >>> report.partitions  # what would go  # doctest: +SKIP
    """
    arch = _open(archive, write=not dry_run)
    names = arch.select_tables(tables)
    delta = None if older_than is None else parse_duration(older_than, what="older_than")
    states = parse_per_state(per_state)
    at = _now(now)
    seconds = parse_grace(grace)
    with _maintaining(arch, "expire", dry_run=dry_run, lock_timeout=lock_timeout):
        return expire_locked(
            arch,
            names,
            older_than=delta,
            per_state=states,
            now=at,
            dry_run=dry_run,
            progress=progress,
            grace=seconds,
        )


# -- both ------------------------------------------------------------------------
def run_retention(
    archive: Archive | Location | str | os.PathLike[str],
    retention: Retention | Mapping[str, Any] | str | os.PathLike[str],
    *,
    now: Any = None,
    before: Any = None,
    dry_run: bool = False,
    expire_dry_run: bool | None = None,
    lock_timeout: float = 0.0,
    progress: ProgressCallback | None = None,
    grace: float | str = DEFAULT_GRACE,
) -> CleanupReport:
    """Expire, then compact, as ``retention`` says, under one lock.

    Used by :meth:`archiver.ParquetCamera.on_cleanup` (which logs the report) and
    :func:`cleanup`. By default it does not wait for another cleanup: it
    raises :class:`~archiver.errors.LockedError` and the next period tries again.

    Args:
        archive: an :class:`~archiver.Archive`, a :class:`~archiver.storage.Location`,
            a path or a URI.
        retention: a :class:`Retention`, a mapping of its fields, or a retention file.
        now: the time ages are measured from (default: now).
        before: compact only the hours that ended by then (default: ``now``).
        dry_run: report only, change nothing.
        expire_dry_run: report expiry only (default: ``dry_run``).
        lock_timeout: seconds to wait for another cleanup.
        progress: called as ``progress(done, total)`` after each partition.
        grace: as for :func:`compact`.
    """
    started = time.perf_counter()
    seconds = parse_grace(grace)
    policy = Retention.coerce(retention)
    arch = _open(archive, write=not dry_run)
    names = arch.select_tables(policy.tables)
    at = _now(now)
    before_us = to_micros(at if before is None else _now(before))
    expire_dry = dry_run if expire_dry_run is None else expire_dry_run or dry_run
    with _maintaining(arch, "cleanup", dry_run=dry_run, lock_timeout=lock_timeout):
        expiry = _expire_as(
            policy, arch, names, now=at, dry_run=expire_dry, progress=progress, grace=seconds
        )
        compaction = _compact_as(
            policy, arch, names, before_us=before_us, dry_run=dry_run, progress=progress,
            grace=seconds,
        )  # fmt: skip
    return CleanupReport(
        expiry,
        compaction,
        seconds=time.perf_counter() - started,
        dry_run=dry_run,
        deletes_rows=policy.deletes_rows,
    )


def _expire_as(
    policy: Retention,
    arch: Archive,
    names: list[str],
    *,
    now: pd.Timestamp,
    dry_run: bool,
    progress: ProgressCallback | None,
    grace: float,
) -> ExpiryReport | None:
    """Expire as ``policy`` says, the lock held; None if it expires nothing."""
    if policy.older_than is None and not policy.per_state:
        return None
    return expire_locked(
        arch,
        names,
        older_than=policy.older_than,
        per_state=policy.per_state,
        now=now,
        dry_run=dry_run,
        progress=progress,
        grace=grace,
        target_bytes=policy.target_file_bytes,
    )


def _compact_as(
    policy: Retention,
    arch: Archive,
    names: list[str],
    *,
    before_us: int,
    dry_run: bool,
    progress: ProgressCallback | None,
    grace: float,
) -> CompactionReport | None:
    """Compact as ``policy`` says, the lock held; None if it does not compact."""
    if not policy.compact:
        return None
    return compact_locked(
        arch,
        names,
        before_us=before_us,
        target_bytes=policy.target_file_bytes,
        keep=policy.keep,
        dry_run=dry_run,
        progress=progress,
        grace=grace,
    )


def cleanup(
    archive: Archive | Location | str | os.PathLike[str],
    retention: Retention | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    older_than: Any = None,
    per_state: Mapping[str, Any] | Iterable[str] | None = None,
    keep: Keep | None = None,
    target_file_bytes: int | str | None = None,
    tables: str | Iterable[str] | None = None,
    compact: bool | None = None,
    now: Any = None,
    before: Any = None,
    dry_run: bool = False,
    allow_deletes: bool = True,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    progress: ProgressCallback | None = None,
    grace: float | str = DEFAULT_GRACE,
) -> CleanupReport:
    """Expire, then compact, as ``retention`` says with the other arguments overriding it.

    Args:
        archive: an :class:`~archiver.Archive`, a path or a URI.
        retention: a :class:`Retention`, a mapping of its fields, or a retention file
            (JSON or TOML); default: no expiry, compaction keeping every row.
        older_than, per_state, keep, target_file_bytes, tables, compact: override
            the retention's setting of that name when given.
        now: the time ages are measured from (default: now).
        before: compact only the hours that ended by then (default: ``now``).
        dry_run: report only, change nothing.
        allow_deletes: if False, a run that would delete rows (expiry, or
            ``keep="latest"``) is a dry run; a lossless compaction still applies.
        lock_timeout: seconds to wait for another cleanup.
        progress: called as ``progress(done, total)`` after each partition.
        grace: as for :func:`compact`.

    Returns:
        A :class:`CleanupReport`; its ``dry_run`` says whether anything was changed.
    """
    policy = Retention.coerce(retention or {}).override(
        older_than=older_than,
        per_state=per_state,
        keep=keep,
        target_file_bytes=target_file_bytes,
        tables=tables,
        compact=compact,
    )
    return run_retention(
        archive,
        policy,
        now=now,
        before=before,
        dry_run=dry_run or (policy.deletes_rows and not allow_deletes),
        lock_timeout=lock_timeout,
        progress=progress,
        grace=grace,
    )


__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_TARGET_FILE_BYTES",
    "CleanupReport",
    "CompactionReport",
    "ExpiryReport",
    "Keep",
    "PartitionCompaction",
    "PartitionExpiry",
    "ProgressCallback",
    "Retention",
    "StateExpiry",
    "cleanup",
    "compact",
    "expire",
    "parse_duration",
    "parse_grace",
    "parse_per_state",
    "parse_size",
    "run_retention",
]
