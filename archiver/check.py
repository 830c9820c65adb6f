"""``archiver check``: read every file of an archive, report damage, move it aside.

Every visible file is read in full, verifying its Parquet page checksums (files
written before checksums were turned on are read without them); its schema must
fit its table, and every folder must be a valid ``date=YYYY-MM-DD/hour=H``
partition. With ``quarantine``, each damaged file or folder is renamed to
``<archive>/_quarantine/<table>/<its path in the table>``: readers never look
under ``_`` names, and a rename on local storage is atomic, so a crash leaves the
file either where it was or in the quarantine, never lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .archive import Archive
from .errors import ArchiverError
from .layout import QUARANTINE
from .listing import is_missing_file, mark_damaged
from .maintenance.lock import lock_unless


@dataclass(frozen=True)
class Problem:
    """One damaged file or folder, by path (relative to the archive), and why."""

    path: str
    reason: str
    #: Where it was moved to (relative to the archive), if quarantined.
    moved_to: str | None = None


@dataclass(frozen=True)
class CheckReport:
    """The result of :func:`check`: what was read, and what is damaged."""

    uri: str
    tables: int = 0
    files: int = 0
    rows: int = 0
    problems: tuple[Problem, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "archive": self.uri,
            "ok": self.ok,
            "tables": self.tables,
            "files": self.files,
            "rows": self.rows,
            "problems": [
                {"path": p.path, "reason": p.reason, "moved_to": p.moved_to} for p in self.problems
            ],
        }

    def __str__(self) -> str:
        return (
            f"checked {self.tables} tables, {self.files} files, {self.rows} rows: "
            f"{len(self.problems)} problems"
        )


def _read_fully(archive: Archive, path: str) -> int:
    """Rows of ``path``, after decoding every page (checksums verified where present)."""
    with archive.fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f, page_checksum_verification=True)
        rows = 0
        for i in range(parquet.num_row_groups):  # one row group at a time: bounded memory
            rows += parquet.read_row_group(i).num_rows
        if rows != parquet.metadata.num_rows:
            raise ValueError(f"{rows} rows read, the footer says {parquet.metadata.num_rows}")
        return rows


def check(archive: Archive, *, quarantine: bool = False, lock_timeout: float = 10.0) -> CheckReport:
    """Read every file of ``archive`` fully and report each damaged file or folder.

    Args:
        archive: the archive.
        quarantine: move damaged files and folders aside into ``_quarantine`` (under
            the maintenance lock, so no compaction or expiry runs meanwhile).
        lock_timeout: seconds to wait for another cleanup when quarantining.
    """
    archive.require()
    with lock_unless(not quarantine, archive.location, timeout=lock_timeout, purpose="check"):
        return _check(archive, quarantine=quarantine)


def _check(archive: Archive, *, quarantine: bool) -> CheckReport:
    found: dict[str, str] = {}

    def note(path: str, reason: str) -> None:
        found.setdefault(path, reason)

    arch = archive.using(note)
    tables = arch.tables()
    files = rows = 0
    for table in tables:
        for partition in arch.partitions(table):
            for info in arch.partition_files(partition):
                try:
                    rows += _read_fully(arch, info.path)
                    files += 1
                except (OSError, pa.ArrowException, ValueError) as exc:
                    if is_missing_file(exc):  # removed by a concurrent cleanup
                        continue
                    note(info.path, mark_damaged(arch.location, info.path, exc))
    problems = []
    for path, reason in sorted(found.items()):
        moved = _quarantine(arch, path) if quarantine else None
        problems.append(Problem(_relative(arch, path), reason, moved))
    return CheckReport(archive.uri, len(tables), files, rows, tuple(problems))


def _relative(archive: Archive, path: str) -> str:
    root = archive.location.root.rstrip("/") + "/"
    return path[len(root) :] if path.startswith(root) else path


def _quarantine(archive: Archive, path: str) -> str:
    """Move ``path`` (a file or a folder) to ``_quarantine/<relative path>``; where it went."""
    fs = archive.fs
    target = archive.location.join(QUARANTINE, _relative(archive, path))
    candidate, n = target, 0
    while fs.get_file_info(candidate).type != pafs.FileType.NotFound:  # never overwrite
        n += 1
        candidate = f"{target}.{n}"
    parent = candidate.rsplit("/", 1)[0]
    try:
        fs.create_dir(parent, recursive=True)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory and not archive.location.atomic_rename:
            # An object store has no folders to rename: move file by file (copy, then delete).
            for entry in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
                if entry.type == pafs.FileType.File:
                    rel = entry.path[len(path.rstrip("/")) + 1 :]
                    fs.create_dir(f"{candidate}/{rel}".rsplit("/", 1)[0], recursive=True)
                    fs.move(entry.path, f"{candidate}/{rel}")
        else:
            fs.move(path, candidate)  # a rename on local storage
    except OSError as exc:
        raise ArchiverError(f"cannot move {path} to {candidate}: {exc}") from exc
    return _relative(archive, candidate)


__all__ = ["CheckReport", "Problem", "check"]
