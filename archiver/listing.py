"""Listing an archive: partitions, a partition's visible files, their footers; retrying.

The one home of "which files of a partition are visible" (:func:`scan_partition`,
used by readers and maintenance alike), of walking the ``date=/hour=`` folders
(:func:`walk_partitions`), and of retrying a read whose file vanished under it
(:func:`retrying`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import one_line
from .layout import (
    COMPACT_MARK,
    DATE_LAYOUT,
    EXPIRED_MARK,
    GROUP_KEY,
    KEEP_KEY,
    REPLACES_KEY,
    CompactInfo,
    Partition,
    expiring_hour,
    is_hidden,
    is_temp,
    live_compacted,
    parse_date,
    parse_hour,
    visible_names,
)
from .schema import schema_problem
from .storage import Location

T = TypeVar("T")
#: Called as ``damaged(path, reason)`` for each damaged file or folder found.
Damaged = Callable[[str, str], None]
#: archiver's own temporary files older than this (seconds) are left over by a crash.
TEMP_MAX_AGE = 3600.0
#: How often a read is tried again when a file vanished under it.
READ_RETRIES = 20
#: Reads verify Parquet page checksums where the writer stored them.
PARQUET = ds.ParquetFileFormat(
    default_fragment_scan_options=ds.ParquetFragmentScanOptions(page_checksum_verification=True)
)


# -- files that vanish -------------------------------------------------------------------
def is_missing_file(exc: BaseException) -> bool:
    """Whether ``exc`` says a file is gone (a concurrent cleanup), not that it is damaged."""
    if isinstance(exc, FileNotFoundError):
        return True
    text = str(exc)
    if "magic bytes" in text:  # "Parquet magic bytes not found": a damaged file
        return False
    return "No such file" in text or "not found" in text.lower() or "does not exist" in text


class Rescan(Exception):
    """A file failed mid-read and was marked damaged: plan the read again without it."""


def retrying(fun: Callable[[], T], retries: int = READ_RETRIES) -> T:
    """Call ``fun`` again when a file vanished under it (a concurrent compaction or expiry),
    or when it raised :class:`Rescan` (it found a damaged file, now skipped)."""
    attempt = 0
    while True:
        try:
            return fun()
        except Rescan:
            continue  # each time one more file is known damaged: this ends
        except OSError as exc:
            attempt += 1
            if attempt == retries or not is_missing_file(exc):
                raise
            time.sleep(0.01 * attempt)


# -- footers -----------------------------------------------------------------------------
@dataclass(frozen=True)
class FileFacts:
    """What a data file's footer says: rows, compaction metadata, or why it is bad."""

    rows: int = 0
    compact: CompactInfo | None = None
    problem: str | None = None
    #: ``captured_at`` bounds (µs) from the row-group statistics, and the schema version.
    first_us: int | None = None
    last_us: int | None = None
    version: str | None = None


_FACTS: dict[tuple[str, str, int | None, int | None], FileFacts] = {}


def _key(location: Location, info: pafs.FileInfo) -> tuple[str, str, int | None, int | None]:
    return (location.uri, info.path, info.size, info.mtime_ns)


def file_facts(location: Location, info: pafs.FileInfo, table: str) -> FileFacts:
    """The footer facts of one data file (cached by path, size and mtime).

    A file that cannot be opened as Parquet, whose footer or compaction metadata is
    damaged, or whose schema does not fit ``table`` gets a ``problem``. A file that
    vanished raises FileNotFoundError (a concurrent cleanup: list again).
    """
    key = _key(location, info)
    cached = _FACTS.get(key)
    if cached is not None:
        return cached
    try:
        with location.fs.open_input_file(info.path) as f:
            meta = pq.ParquetFile(f).metadata
        problem = schema_problem(table, meta.schema.to_arrow_schema())
        if problem is not None:
            facts = FileFacts(problem=problem)
        else:
            compact = (
                _compact_info(meta, info.base_name) if COMPACT_MARK in info.base_name else None
            )
            version = (meta.metadata or {}).get(b"archiver.schema_version")
            facts = FileFacts(
                meta.num_rows,
                compact,
                None,
                *_time_bounds(meta),
                None if version is None else version.decode(errors="replace"),
            )
    except (OSError, pa.ArrowException, ValueError, TypeError) as exc:
        if is_missing_file(exc):
            raise FileNotFoundError(info.path) from exc
        facts = FileFacts(problem=one_line(exc))
    remember(location, info, facts)
    return facts


def remember(location: Location, info: pafs.FileInfo, facts: FileFacts) -> None:
    """Cache ``facts`` (e.g. a problem found while reading pages) for ``info``."""
    if len(_FACTS) >= 65536:
        _FACTS.clear()
    _FACTS[_key(location, info)] = facts


def _time_bounds(meta: pq.FileMetaData) -> tuple[int | None, int | None]:
    """Min and max ``captured_at`` (µs) from the row-group statistics, which are in the
    file's own unit (pandas and Spark write nanoseconds)."""
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    arrow = meta.schema.to_arrow_schema()
    if "captured_at" not in names or arrow.get_field_index("captured_at") < 0:
        return None, None
    kind = arrow.field("captured_at").type
    if not pa.types.is_timestamp(kind):
        return None, None
    scale = {"s": 10**6, "ms": 1000, "us": 1, "ns": 1}[kind.unit]
    divide = 1000 if kind.unit == "ns" else 1
    col = names.index("captured_at")
    lo = hi = None
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(col).statistics
        if stats is None or not stats.has_min_max:
            continue
        low, high = stats.min_raw, stats.max_raw
        if not (isinstance(low, int) and isinstance(high, int)):  # INT96: no usable order
            continue
        low, high = low * scale // divide, high * scale // divide
        lo = low if lo is None else min(lo, low)
        hi = high if hi is None else max(hi, high)
    return lo, hi


def read_fully(fs: pafs.FileSystem, path: str) -> int:
    """Rows of ``path``, after decoding every page (checksums verified where present);
    raises (OSError, ArrowException, ValueError) if any part is damaged."""
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f, page_checksum_verification=True)
        rows = 0
        for i in range(parquet.num_row_groups):  # one row group at a time: bounded memory
            rows += parquet.read_row_group(i).num_rows
        if rows != parquet.metadata.num_rows:
            raise ValueError(f"{rows} rows read, the footer says {parquet.metadata.num_rows}")
        return rows


def mark_damaged(location: Location, path: str, exc: BaseException) -> str:
    """Remember that reading ``path`` failed with ``exc`` (later listings skip it); the reason."""
    reason = one_line(exc)
    try:
        info = location.fs.get_file_info(path)
    except OSError:
        return reason
    if info.type == pafs.FileType.File:  # (a merged file's footer still says what it merged)
        known = _FACTS.get(_key(location, info))
        remember(
            location, info, FileFacts(problem=reason, compact=known.compact if known else None)
        )
    return reason


def _compact_info(meta: pq.FileMetaData, name: str) -> CompactInfo:
    kv = meta.metadata or {}
    replaces = json.loads(kv[REPLACES_KEY]) if REPLACES_KEY in kv else []
    group = json.loads(kv[GROUP_KEY]) if GROUP_KEY in kv else [name]
    keep = kv.get(KEEP_KEY, b"all").decode()
    if not all(isinstance(n, str) for n in [*replaces, *group]):
        raise ValueError("archiver.replaces/archiver.group metadata is not a list of names")
    return CompactInfo(frozenset(replaces), frozenset(group), meta.num_rows, keep)


def all_facts(location: Location, infos: list[pafs.FileInfo], table: str) -> list[FileFacts | None]:
    """:func:`file_facts` of each file, footers read in parallel; None for a vanished file."""

    def one(info: pafs.FileInfo) -> FileFacts | None:
        try:
            return file_facts(location, info, table)
        except FileNotFoundError:
            return None

    if len(infos) < 2 or all(_key(location, i) in _FACTS for i in infos):
        return [one(i) for i in infos]
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, infos))


# -- folders -----------------------------------------------------------------------------
def list_dir(location: Location, path: str) -> list[pafs.FileInfo]:
    """The entries of ``path``; none if it is gone (removed by a concurrent expiry)."""
    try:
        infos: list[pafs.FileInfo] = location.fs.get_file_info(pafs.FileSelector(path))
    except FileNotFoundError:
        return []
    return infos


def _not_a_partition(info: pafs.FileInfo, layout: str) -> str:
    if info.type == pafs.FileType.Directory:
        return f"not a partition folder ({layout})"
    return f"a file where a partition folder ({layout}) belongs"


@dataclass
class TableWalk:
    """A table's ``date=/hour=`` folders: its partitions, oldest first, and the hour
    folders an interrupted expiry renamed aside."""

    partitions: list[Partition] = field(default_factory=list)
    set_aside: list[str] = field(default_factory=list)
    #: Hours an interrupted expiry on an object store left with their marker (hidden):
    #: (the hour folder's path, the marker's path).
    expiring: list[tuple[str, str]] = field(default_factory=list)


def walk_partitions(location: Location, table: str, damaged: Damaged | None = None) -> TableWalk:
    """Walk ``<table>/date=YYYY-MM-DD/hour=H``.

    Hidden entries (``.``/``_``) are ignored, apart from hour folders renamed aside by
    expiry; any other entry that is not a valid partition folder is reported to
    ``damaged`` and skipped.
    """
    walk = TableWalk()
    for day in list_dir(location, location.join(table)):
        if is_hidden(day.base_name):
            continue
        date_ = parse_date(day.base_name)
        if day.type != pafs.FileType.Directory or date_ is None:
            if damaged is not None:
                damaged(day.path, _not_a_partition(day, DATE_LAYOUT))
            continue
        hours = list_dir(location, day.path)
        # Hours being expired are hidden, their folder gone or not (layout.EXPIRING_PREFIX).
        markers = {expiring_hour(h.base_name): h.path for h in hours}
        markers.pop(None, None)
        walk.expiring.extend((f"{day.path}/{n}", m) for n, m in markers.items() if n)
        for hour in hours:
            name = hour.base_name
            if name in markers:
                continue
            if is_hidden(name):
                if hour.type == pafs.FileType.Directory and EXPIRED_MARK in name:
                    walk.set_aside.append(hour.path)
                continue
            h = parse_hour(name)
            if hour.type != pafs.FileType.Directory or h is None:
                if damaged is not None:
                    damaged(hour.path, _not_a_partition(hour, "hour=H (0-23)"))
                continue
            walk.partitions.append(Partition(table, date_, h, hour.path))
    walk.partitions.sort(key=lambda p: (p.date, p.hour))
    return walk


# -- a partition's files -----------------------------------------------------------------
@dataclass
class PartitionScan:
    """One partition's files: what readers see, and the leftovers of interrupted runs."""

    files: dict[str, pafs.FileInfo] = field(default_factory=dict)
    infos: dict[str, CompactInfo] = field(default_factory=dict)
    visible: list[pafs.FileInfo] = field(default_factory=list)
    #: Leftovers of interrupted runs, in the order they must be deleted.
    garbage: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    tombstones: list[str] = field(default_factory=list)
    #: archiver's own temporary files older than :data:`TEMP_MAX_AGE`.
    temps: list[str] = field(default_factory=list)
    #: Damaged files (unreadable footer or foreign schema): left alone, never an input.
    damaged: list[pafs.FileInfo] = field(default_factory=list)
    #: Rows of each readable visible plain file, from its footer.
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def leftovers(self) -> list[str]:
        return self.garbage + self.replaced + self.tombstones

    def num_rows(self, info: pafs.FileInfo) -> int:
        """Rows of a visible file, from its footer."""
        compact = self.infos.get(info.base_name)
        return compact.rows if compact is not None else self.rows[info.base_name]


def scan_partition(
    location: Location,
    partition: Partition,
    damaged: Damaged | None = None,
    *,
    wall: float | None = None,
) -> PartitionScan:
    """List a partition; damaged files are reported to ``damaged`` and left out of it.

    With ``wall`` (a maintenance run: the time now, epoch seconds), archiver's
    temporary files older than :data:`TEMP_MAX_AGE` are listed in ``temps``, and
    every page of a committed merge whose inputs are still here (to be deleted) is
    verified first (:func:`_damaged_commits`).

    A merged file whose footer reads but a page does not replaces nothing: with all
    its inputs here (they hold its rows) its group is ``garbage``; else it is a
    damaged file, kept.
    """
    scan = PartitionScan()
    entries = list_dir(location, partition.path)
    for e in entries:
        name = e.base_name
        if e.type != pafs.FileType.File:
            if damaged is not None and name.endswith(".parquet") and not is_hidden(name):
                damaged(e.path, "not a file")
            continue
        if is_temp(name):
            stale = wall is not None and e.mtime is not None
            if stale and wall - e.mtime.timestamp() > TEMP_MAX_AGE:
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
    if wall is not None:
        broken.update(_damaged_commits(location, scan, broken))
    # A damaged merged file replaces nothing. With all its inputs there (they hold its
    # rows) its group is garbage (a maintenance run deletes it); else it is kept as a
    # damaged file.
    infos = {name: (scan.files.pop(name), scan.infos[name]) for name in broken}
    for name, (info, compact) in infos.items():
        if compact.replaces and compact.replaces <= set(scan.files):
            if damaged is not None:
                note = "removed" if wall is not None else "replaces nothing"
                damaged(info.path, f"{broken[name]} (a merged file: {note}, its inputs kept)")
        else:
            problems[name] = broken[name]
            del scan.infos[name]
    present = set(scan.files)
    live = live_compacted(present, scan.infos)
    visible = visible_names(present, scan.infos)
    # Garbage: a group whose inputs are all there (its rows are in them), or one that
    # lost a race to a live group replacing the same files (its rows are in that one).
    covered = frozenset().union(*(scan.infos[n].replaces for n in live))
    scan.garbage = sorted(
        n
        for n in scan.infos
        if n not in live and (scan.infos[n].replaces <= present or scan.infos[n].replaces & covered)
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
            if not is_missing_file(exc):
                found[name] = mark_damaged(location, path, exc)
    return found
