"""``archiver check``: read every file of an archive, report damage, move it aside.

Every visible file is read in full, verifying its Parquet page checksums (files
written before checksums were turned on are read without them); its schema must
fit its table, and every folder must be a valid ``date=YYYY-MM-DD/hour=H``
partition. With ``quarantine``, each damaged file or folder is renamed to
``<archive>/_quarantine/<table>/<its path in the table>``: readers never look
under ``_`` names, and a rename on local storage is atomic, so a crash leaves the
file either where it was or in the quarantine, never lost. A symbolic link at
``_quarantine`` or below it on the way is refused, never followed out of the archive.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from .archive import Archive
from .errors import ArchiverError
from .layout import QUARANTINE, is_hidden
from .listing import is_missing_file, mark_damaged, read_fully
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


def check(archive: Archive, *, quarantine: bool = False, lock_timeout: float = 10.0) -> CheckReport:
    """Read every file of ``archive`` fully and report each damaged file or folder.

    Args:
        archive: the archive.
        quarantine: move damaged files and folders aside into ``_quarantine`` (under
            the maintenance lock, so no compaction or expiry runs meanwhile).
        lock_timeout: seconds to wait for another cleanup when quarantining.
    """
    archive.require(write=quarantine)
    with lock_unless(not quarantine, archive.location, timeout=lock_timeout, purpose="check"):
        return _check(archive, quarantine=quarantine)


def _check(archive: Archive, *, quarantine: bool) -> CheckReport:
    found: dict[str, str] = {}

    def note(path: str, reason: str) -> None:
        found.setdefault(path, reason)

    arch = archive.using(note)
    if quarantine:
        _refuse_symlinks(arch, arch.location.join(QUARANTINE))
    for entry in arch.fs.get_file_info(pafs.FileSelector(arch.location.root)):
        if entry.type != pafs.FileType.Directory and not is_hidden(entry.base_name):
            note(entry.path, "a file where a table folder belongs")
    tables = arch.tables()
    files = rows = 0
    for table in tables:
        for partition in arch.partitions(table):
            for path in _dangling_links(arch, partition.path):
                note(path, "a symbolic link to nothing")
            for info in arch.partition_files(partition):
                try:
                    rows += read_fully(arch.fs, info.path)
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


def _exists(archive: Archive, path: str) -> bool:
    if archive.location.local:
        return os.path.lexists(path)
    return bool(archive.fs.get_file_info(path).type != pafs.FileType.NotFound)


def _relative(archive: Archive, path: str) -> str:
    root = archive.location.root.rstrip("/") + "/"
    return path[len(root) :] if path.startswith(root) else path


def _dangling_links(archive: Archive, folder: str) -> list[str]:
    """Visible ``*.parquet`` symbolic links in ``folder`` that point nowhere (pyarrow
    does not list them)."""
    if not archive.location.local:
        return []
    try:
        with os.scandir(folder) as entries:
            return sorted(
                e.path
                for e in entries
                if e.name.endswith(".parquet")
                and not is_hidden(e.name)
                and e.is_symlink()
                and not os.path.exists(e.path)
            )
    except OSError:  # removed by a concurrent expiry
        return []


def _refuse_symlinks(archive: Archive, path: str) -> None:
    """Raise if ``path`` or a folder between the quarantine and it is a symbolic link:
    moving damaged files there would take them out of the archive."""
    if not archive.location.local:
        return
    top = archive.location.join(QUARANTINE)
    parts = path[len(top) :].strip("/").split("/") if path != top else []
    current = top
    for part in ["", *parts]:
        current = f"{current}/{part}" if part else current
        if os.path.islink(current):
            raise ArchiverError(
                f"{current} is a symbolic link: refusing to quarantine through it; remove it"
            )


def _quarantine(archive: Archive, path: str) -> str:
    """Move ``path`` (a file or a folder) to ``_quarantine/<relative path>``; where it went."""
    fs = archive.fs
    target = archive.location.join(QUARANTINE, _relative(archive, path))
    candidate, n = target, 0
    while _exists(archive, candidate):  # never overwrite
        n += 1
        candidate = f"{target}.{n}"
    parent = candidate.rsplit("/", 1)[0]
    _refuse_symlinks(archive, candidate)
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
