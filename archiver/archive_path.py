"""What a path given as an archive is: an archive, or which mistake (a file, a table...).

An *archive* is a folder of table folders, each holding ``date=YYYY-MM-DD`` partition
folders (see :mod:`archiver.layout`). A folder with no sub-folders, or only empty ones,
is an archive with no tables yet (a recorder creates the tables). Anything else is
named precisely, so that ``--archive data`` (the archive's parent) or
``--archive data/archive/tasks`` (a table) says what was meant instead of reading
the wrong folders as tables. Only a few listings are made: the path, its
sub-folders, and (when none is a table) theirs.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs

from .errors import ArchiveNotFound, ArchiverError, NotAnArchiveError, one_line
from .layout import is_hidden
from .listing import list_dir
from .storage import Location

#: Sub-folders looked into when searching an archive's parent (bounds the listings).
MAX_FOLDERS = 64
_PARTITION_PREFIXES = ("date=", "hour=")


class PathKind(enum.Enum):
    """What :func:`classify_archive_path` found."""

    ARCHIVE = "archive"
    MISSING = "missing"
    FILE = "file"
    TABLE = "table"
    PARTITION = "partition"
    PARENT = "parent"
    NOT_ARCHIVE = "not an archive"


@dataclass(frozen=True)
class ArchivePath:
    """The kind of a path, and the message that names the mistake (None for an archive)."""

    kind: PathKind
    uri: str
    problem: str | None = None


def _parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0]


def _child(uri: str, name: str) -> str:
    return f"{uri.rstrip('/')}/{name}"


def _subfolders(location: Location, path: str) -> tuple[list[str], bool, bool]:
    """Visible sub-folder names of ``path``, whether it holds anything visible, and
    whether it holds partition folders."""
    visible = [i for i in list_dir(location, path) if not is_hidden(i.base_name)]
    names = sorted(i.base_name for i in visible if i.type == pafs.FileType.Directory)
    return names, bool(visible), any(n.startswith("date=") for n in names)


def classify_archive_path(location: Location) -> ArchivePath:
    """Whether ``location`` is an archive, and if not, what it is instead."""
    uri = location.uri
    info = location.fs.get_file_info(location.root)  # OSError: see check_archive_path
    if info.type == pafs.FileType.NotFound:
        return ArchivePath(PathKind.MISSING, uri, f"no archive at {uri}")
    if info.type != pafs.FileType.Directory:
        return ArchivePath(PathKind.FILE, uri, f"{uri} is a file, not an archive folder")
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    if name.startswith(_PARTITION_PREFIXES):
        top = _parent(uri) if name.startswith("date=") else _parent(_parent(uri))
        table = top.rsplit("/", 1)[-1]
        return ArchivePath(
            PathKind.PARTITION,
            uri,
            f"{uri}: that is a partition of the {table} table; the archive is {_parent(top)}",
        )
    folders, _, partitioned = _subfolders(location, location.root)
    if partitioned:
        return ArchivePath(
            PathKind.TABLE,
            uri,
            f"{uri}: that is the {name} table; the archive is its parent {_parent(uri)}",
        )
    foreign = []
    for folder in folders[:MAX_FOLDERS]:
        inner, anything, is_table = _subfolders(location, location.join(folder))
        if is_table:
            return ArchivePath(PathKind.ARCHIVE, uri)
        if anything:
            foreign.append((folder, inner))
    if not foreign:  # no folders, or empty table folders: an archive with no rows yet
        return ArchivePath(PathKind.ARCHIVE, uri)
    archives = [
        _child(uri, folder)
        for folder, inner in foreign
        if any(_subfolders(location, location.join(folder, t))[2] for t in inner[:MAX_FOLDERS])
    ]
    if archives:
        return ArchivePath(
            PathKind.PARENT,
            uri,
            f"{uri} is not an archive but holds one: did you mean {' or '.join(archives)}?",
        )
    shown = ", ".join(folders[:8]) + (", ..." if len(folders) > 8 else "")
    return ArchivePath(
        PathKind.NOT_ARCHIVE,
        uri,
        f"{uri} is not an archive: none of its folders ({shown}) holds date= partitions",
    )


def _unwritable(location: Location) -> str | None:
    """Why the archive cannot be created or written there (local paths only), or None."""
    if not location.local:
        return None  # object stores: only a write can tell
    path = os.path.abspath(location.root)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    if not os.path.isdir(path):
        return f"{path} is a file"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable"
    return None


def check_archive_path(
    location: Location, *, write: bool = False, must_exist: bool = True
) -> ArchivePath:
    """Raise an error naming the mistake unless ``location`` is an archive.

    Args:
        location: where the archive is.
        write: also check that the archive can be written (created, if missing).
        must_exist: a missing archive is an error (else: one to be created).

    Raises:
        ArchiveNotFound: nothing is there (also a :class:`FileNotFoundError`).
        NotAnArchiveError: a file, a table, a partition, an archive's parent, another
            folder, an empty path, or (``write``) a place that cannot be written.
        ArchiverError: the storage cannot be reached (an object store's endpoint down).
    """
    if not location.uri.strip():  # "" would silently be the current folder
        raise NotAnArchiveError("the archive path is empty")
    try:
        found = classify_archive_path(location)
    except (OSError, pa.ArrowException) as exc:  # no such host; GCS: bad credentials
        raise ArchiverError(f"cannot reach the archive {location.uri}: {one_line(exc)}") from exc
    if found.kind is PathKind.MISSING and must_exist:
        raise ArchiveNotFound(found.problem)
    if found.kind not in (PathKind.ARCHIVE, PathKind.MISSING):
        raise NotAnArchiveError(found.problem)
    why = _unwritable(location) if write else None
    if why is not None:
        raise NotAnArchiveError(f"cannot write the archive {location.uri}: {why}")
    return found
