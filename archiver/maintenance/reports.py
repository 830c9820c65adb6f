"""What a maintenance run did, or in a dry run would do."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

#: Called as ``progress(done, total)`` after each partition.
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class PartitionCompaction:
    """What compaction did (or would do) to one partition."""

    table: str
    date: str
    hour: int
    files_in: int
    files_out: int
    rows_in: int
    rows_out: int
    bytes_in: int
    bytes_out: int


@dataclass(frozen=True)
class CompactionReport:
    """The result of `archiver.maintenance.compact`.

    ``files_out`` and ``bytes_out`` are estimates in a dry run.
    """

    partitions: tuple[PartitionCompaction, ...] = ()
    seconds: float = 0.0
    dry_run: bool = False
    #: Files removed to finish interrupted runs, and stale temporary files removed.
    recovered: int = 0
    temps_removed: int = 0
    #: ``(path, reason)`` of each damaged file or folder left alone.
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def files_in(self) -> int:
        return sum(p.files_in for p in self.partitions)

    @property
    def files_out(self) -> int:
        return sum(p.files_out for p in self.partitions)

    @property
    def rows(self) -> int:
        return sum(p.rows_out for p in self.partitions)

    @property
    def bytes_in(self) -> int:
        return sum(p.bytes_in for p in self.partitions)

    @property
    def bytes_out(self) -> int:
        return sum(p.bytes_out for p in self.partitions)

    def __str__(self) -> str:
        verb = "would compact" if self.dry_run else "compacted"
        return (
            f"{verb} {len(self.partitions)} partitions: {self.files_in} -> {self.files_out} "
            f"files, {self.rows} rows, {self.bytes_in} -> {self.bytes_out} bytes "
            f"in {self.seconds:.2f}s{_skipped(self.skipped)}"
        )


@dataclass(frozen=True)
class PartitionExpiry:
    """A whole partition that expired (or would)."""

    table: str
    date: str
    hour: int
    files: int
    rows: int
    bytes: int


@dataclass(frozen=True)
class StateExpiry:
    """Tasks of one state that expired (or would), with all their rows."""

    state: str
    retention: pd.Timedelta
    tasks: int
    rows: int


@dataclass(frozen=True)
class ExpiryReport:
    """The result of `archiver.maintenance.expire`: what went, or in a dry run what would go."""

    now: pd.Timestamp
    dry_run: bool = True
    partitions: tuple[PartitionExpiry, ...] = ()
    states: tuple[StateExpiry, ...] = ()
    #: uuids of the expired tasks, sorted.
    uuids: tuple[str, ...] = ()
    #: task partitions rewritten without the expired tasks.
    rewritten: int = 0
    seconds: float = 0.0
    #: ``(path, reason)`` of each damaged file or folder left alone (or dropped with its hour).
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def files(self) -> int:
        return sum(p.files for p in self.partitions)

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.partitions) + sum(s.rows for s in self.states)

    def __str__(self) -> str:
        verb = "would expire" if self.dry_run else "expired"
        return (
            f"{verb} {len(self.partitions)} partitions ({self.files} files) and "
            f"{len(self.uuids)} tasks: {self.rows} rows in {self.seconds:.2f}s"
            f"{_skipped(self.skipped)}"
        )


@dataclass(frozen=True)
class CleanupReport:
    """The result of `archiver.maintenance.run_retention`: expiry, then compaction."""

    expiry: ExpiryReport | None
    compaction: CompactionReport | None
    seconds: float = 0.0
    #: Whether nothing was changed, and whether the retention deletes rows.
    dry_run: bool = False
    deletes_rows: bool = False

    def __str__(self) -> str:
        parts = [str(r) for r in (self.expiry, self.compaction) if r is not None]
        return "; ".join(parts) or "nothing to do"


def _skipped(skipped: tuple[tuple[str, str], ...]) -> str:
    return f"; skipped {len(skipped)} damaged files or folders" if skipped else ""
