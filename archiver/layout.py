"""The archive's on-disk layout: paths, names, metadata keys and which files are visible.

Layout: ``<archive>/<table>/date=YYYY-MM-DD/hour=H/<file>.parquet``. A file is
visible unless its name starts with ``.`` or ``_`` (temporary and foreign files)
or a live compacted file in the same partition lists it in its ``archiver.replaces``
metadata (a compaction that crashed before deleting its inputs). A compacted file
is one of a group written together (``archiver.group``); it is live once the whole
group is present, or once none of the files it replaces is left; of two live groups
replacing a same file (racing cleanups) only one counts (:func:`overlap_winners`). See
:mod:`archiver.maintenance` for the protocol and why it never shows a row twice.

Hour arithmetic lives here too: a partition spans ``[start_us, end_us)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timezone

from .schema import HOUR_US, in_partition_range

REPLACES_KEY = b"archiver.replaces"
GROUP_KEY = b"archiver.group"
KEEP_KEY = b"archiver.keep"
#: In the name of every file a compaction or an expiry rewrite writes.
COMPACT_MARK = "-compact-"
#: Quarantined files live under ``<archive>/_quarantine/<table>/...`` (hidden: ``_``).
QUARANTINE = "_quarantine"
#: A file being written is ``.<name>.tmp`` (hidden) until its rename.
TMP_PREFIX = ".part-"
TMP_SUFFIX = ".tmp"
#: Commit journal: ``<archive>/_commits/<group>`` names the partition (``table/date=/hour=``)
#: of a commit from before its first rename until its inputs are deleted.
JOURNAL = "_commits"
#: Marks a partition directory renamed aside by expiry (``.hour=H.expired-<id>``).
EXPIRED_MARK = ".expired-"
#: On object stores (no rename) expiry first writes ``date=D/_expiring.hour=H``, then
#: deletes the hour's files, then the marker: an hour with its marker is hidden from
#: archiver's readers, so an expiry interrupted at any delete shows no half hour.
EXPIRING_PREFIX = "_expiring."
#: How a partition folder's date range reads in messages (see schema.in_partition_range).
DATE_LAYOUT = "date=YYYY-MM-DD, 1970-2261"
#: Partition folder names: ASCII digits only (``int()`` also takes other scripts' digits).
_DATE = re.compile(r"date=([0-9]{4})-([0-9]{2})-([0-9]{2})", re.ASCII)
_HOUR = re.compile(r"hour=([0-9]{1,2})", re.ASCII)
_EPOCH = date(1970, 1, 1)


@dataclass(frozen=True)
class Partition:
    """One ``date=/hour=`` directory of a table."""

    table: str
    date: str
    hour: int
    path: str

    @property
    def start_us(self) -> int:
        """Start of the partition's hour, in microseconds since the epoch (UTC)."""
        day = datetime.strptime(self.date, "%Y-%m-%d").replace(tzinfo=timezone.utc)
        return int(day.timestamp()) * 10**6 + self.hour * HOUR_US

    @property
    def end_us(self) -> int:
        """End of the partition's hour (exclusive), in microseconds since the epoch."""
        return self.start_us + HOUR_US

    def ended_by(self, micros: int) -> bool:
        """Whether the hour is over at ``micros``: no later row can belong to it."""
        return self.end_us <= micros

    def overlaps(self, lo: int | None, hi: int | None) -> bool:
        """Whether the hour overlaps ``[lo, hi)`` (µs; None: unbounded)."""
        return (lo is None or self.end_us > lo) and (hi is None or self.start_us < hi)


def partition_path(hour_bucket: int) -> str:
    """``date=YYYY-MM-DD/hour=H`` of an hour since the epoch (UTC).

    ``hour`` is not zero-padded, so pyarrow, DuckDB and Polars all read an integer.
    Outside :func:`~archiver.schema.in_partition_range` (1970-01-01 .. 2262-01-01) it
    raises ValueError (the rows stay buffered and are counted).
    """
    if not in_partition_range(hour_bucket * HOUR_US):
        raise ValueError(f"captured_at hour {hour_bucket} is outside the years 1970..2261")
    start = datetime.fromtimestamp(hour_bucket * 3600, tz=timezone.utc)
    return f"date={start:%Y-%m-%d}/hour={start.hour}"


def parse_partition(relative: str) -> tuple[str, str, int] | None:
    """``(table, date, hour)`` of ``table/date=YYYY-MM-DD/hour=H``, None if not one."""
    parts = relative.strip().split("/")
    if len(parts) != 3 or not parts[0] or is_hidden(parts[0]):
        return None
    day, hour = parse_date(parts[1]), parse_hour(parts[2])
    return None if day is None or hour is None else (parts[0], day, hour)


def is_hidden(name: str) -> bool:
    """Names that pyarrow, DuckDB and Polars skip: temporary and foreign files."""
    return name.startswith((".", "_"))


def expiring_marker(hour_name: str) -> str:
    """The name of the expiry marker of the hour folder ``hour_name`` (in its day folder)."""
    return f"{EXPIRING_PREFIX}{hour_name}"


def expiring_hour(name: str) -> str | None:
    """The hour folder an expiry marker named ``name`` hides, None if not a marker."""
    return name[len(EXPIRING_PREFIX) :] if name.startswith(EXPIRING_PREFIX) else None


def is_temp(name: str) -> bool:
    """Whether ``name`` is one of archiver's own temporary files (``.part-*.tmp``)."""
    return name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX)


def parse_date(name: str) -> str | None:
    """``YYYY-MM-DD`` of a ``date=YYYY-MM-DD`` folder name, None if not a valid date
    in :func:`~archiver.schema.in_partition_range` (1970-01-01 .. 2261-12-31)."""
    match = _DATE.fullmatch(name)
    if match is None:
        return None
    try:
        day = date(*map(int, match.groups()))
    except ValueError:
        return None
    if not in_partition_range((day - _EPOCH).days * 24 * HOUR_US):
        return None
    return name[5:]


def parse_hour(name: str) -> int | None:
    """``H`` of an ``hour=H`` folder name (0-23), None if not valid."""
    match = _HOUR.fullmatch(name)
    hour = None if match is None else int(match.group(1))
    return hour if hour is not None and hour < 24 else None


@dataclass(frozen=True)
class CompactInfo:
    """What a compacted file's metadata says: the files it replaces and its group."""

    replaces: frozenset[str]
    group: frozenset[str]
    rows: int
    keep: str = "all"


def live_compacted(present: set[str], infos: dict[str, CompactInfo]) -> set[str]:
    """The compacted files among ``present`` whose ``replaces`` take effect.

    A group is renamed into place one file at a time, after which its inputs are
    deleted: a group with a member missing while one of its inputs is still here
    is a half-committed compaction (its rows are all still in the inputs), so it
    is ignored. A member missing once every input is gone was itself compacted
    later, and the rest of the group stays valid.

    Two groups that replace a same file were committed by two cleanups racing
    without a common lock (two hosts on one bucket): only the first group by its
    sorted names counts (:func:`overlap_winners`), so the rows show once.
    """
    complete = {
        name
        for name, info in infos.items()
        if info.group <= present or not (info.replaces & present)
    }
    return overlap_winners(complete, present, infos)


def overlap_winners(names: set[str], present: set[str], infos: dict[str, CompactInfo]) -> set[str]:
    """``names`` minus the groups whose ``replaces`` overlap an earlier group's.

    Whole groups come first, then by their sorted member names: the same order on
    every host and every listing, so a winner needs no lock. A later compaction only
    ever replaces visible files, so groups never overlap unless they raced.
    """
    groups: dict[tuple[bool, tuple[str, ...]], frozenset[str]] = {}
    for name in names:
        info = infos[name]
        key = (not info.group <= present, tuple(sorted(info.group)))
        groups[key] = groups.get(key, frozenset()) | info.replaces
    taken: frozenset[str] = frozenset()
    winners: set[tuple[str, ...]] = set()
    for key in sorted(groups):
        if not groups[key] & taken:
            taken |= groups[key]
            winners.add(key[1])
    return {n for n in names if tuple(sorted(infos[n].group)) in winners}


def visible_names(present: set[str], infos: dict[str, CompactInfo]) -> set[str]:
    """Which of the ``present`` data files a reader should read (see :func:`live_compacted`)."""
    live = live_compacted(present, infos)
    replaced: set[str] = set()
    for name in live:
        replaced |= infos[name].replaces
    return {n for n in present if n not in replaced and (n not in infos or n in live)}
