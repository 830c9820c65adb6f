"""Resolve an archive path or URI to a pyarrow filesystem and a root path."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from .errors import ArchiverError

#: Filesystems where ``move`` is a real rename (atomic): write a hidden temporary
#: file, then rename it. Elsewhere (object stores) a move is a copy, and an upload
#: only becomes visible once complete, so files are written under their final name.
_RENAMING = frozenset({"local", "file", "memory", "mock"})
#: fsync files before their rename and directories after, on local filesystems.
#: Only benchmarks turn it off (to measure its cost).
FSYNC = True


def _protocols(fs: pafs.FileSystem) -> set[str]:
    """Names of the storage behind ``fs`` (``local``, ``s3``, ``memory``...)."""
    if isinstance(fs, pafs.SubTreeFileSystem):
        return _protocols(fs.base_fs)
    if isinstance(fs, pafs.PyFileSystem):
        inner = getattr(fs.handler, "fs", None)  # an FSSpecHandler
        proto = getattr(inner, "protocol", None)
        if proto is None:
            return {fs.type_name}
        return {proto} if isinstance(proto, str) else set(proto)
    return {fs.type_name}


def _local_paths(fs: pafs.FileSystem) -> bool:
    """Whether the paths of ``fs`` are local paths (pyarrow's or fsspec's local filesystem)."""
    if isinstance(fs, pafs.LocalFileSystem):
        return True
    return isinstance(fs, pafs.PyFileSystem) and bool(_protocols(fs) & {"file", "local"})


def fsync_path(path: str) -> None:
    """fsync a file or a directory by path (a directory that cannot be fsynced is skipped)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some filesystems refuse to fsync a directory; a file's error is real.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP) or not os.path.isdir(path):
            raise
    finally:
        os.close(fd)


def as_pyarrow_fs(filesystem: Any) -> pafs.FileSystem:
    """A pyarrow filesystem from a pyarrow one or an fsspec one (e.g. ``s3fs``)."""
    if isinstance(filesystem, pafs.FileSystem):
        return filesystem
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec is optional
        fsspec = None
    if fsspec is not None and isinstance(filesystem, fsspec.AbstractFileSystem):
        return pafs.PyFileSystem(pafs.FSSpecHandler(filesystem))
    raise TypeError(
        f"filesystem must be a pyarrow.fs.FileSystem or an fsspec filesystem, "
        f"got {type(filesystem).__name__}"
    )


@dataclass(frozen=True)
class Location:
    """A filesystem and the archive's root path on it."""

    fs: pafs.FileSystem
    root: str
    uri: str

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def atomic_rename(self) -> bool:
        """Whether ``move`` is a rename (local, memory); object stores copy instead."""
        return bool(_protocols(self.fs) & _RENAMING)

    @property
    def durable(self) -> bool:
        """Whether files and directories are fsynced (local filesystems; not object stores)."""
        return FSYNC and _local_paths(self.fs)

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts]) if self.root else "/".join(parts)

    # -- durability: the one home of fsync ------------------------------------------------
    def sync(self, path: str) -> None:
        """fsync the file or directory ``path`` (a no-op where not :attr:`durable`)."""
        if self.durable:
            fsync_path(path)

    def sync_parents(self, paths: Iterable[str]) -> None:
        """fsync the directory holding each of ``paths``, once per directory (if it exists)."""
        if self.durable:
            for directory in sorted({p.rsplit("/", 1)[0] for p in paths}):
                # A directory removed since has nothing to sync (the caller syncs its parent).
                with contextlib.suppress(FileNotFoundError):
                    fsync_path(directory)

    def make_dirs(self, directory: str) -> None:
        """Create ``directory`` and its parents; fsync the parent of each one created."""
        if not self.durable:
            self.fs.create_dir(directory, recursive=True)
            return
        missing = []
        path = directory
        while path and not os.path.isdir(path):
            missing.append(path)
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
        if not missing:
            return
        os.makedirs(directory, exist_ok=True)
        self.sync_parents(missing)

    def rename(self, src: str, dest: str, *, sync: bool = True) -> None:
        """Rename ``src`` to ``dest``; with ``sync``, fsync the directory after.

        ``src`` is fsynced by whoever wrote it (see :func:`archiver.sink.write_temp`).
        """
        self.fs.move(src, dest)
        if sync:
            self.sync_parents([dest])


def resolve(archive: str | os.PathLike[str], filesystem: Any = None) -> Location:
    """Turn ``archive`` (a local path or a URI such as ``s3://bucket/x``) into a Location.

    ``filesystem`` (a pyarrow or fsspec filesystem) overrides the scheme: then
    ``archive`` is the root path on it.
    """
    text = os.fspath(archive)
    if filesystem is not None:
        fs = as_pyarrow_fs(filesystem)
        root = text.rstrip("/")
        if isinstance(fs, pafs.LocalFileSystem) and "://" not in text:
            root = os.path.abspath(text)
        return Location(fs, root, text)
    scheme = urlparse(text).scheme
    if not scheme or len(scheme) == 1:  # a plain path (or a Windows drive letter)
        return Location(pafs.LocalFileSystem(), os.path.abspath(text), text)
    if scheme == "file":
        fs, path = pafs.FileSystem.from_uri(text)
        return Location(fs, path.rstrip("/") or "/", text)
    if scheme in ("s3", "gs", "gcs", "hdfs", "abfs", "abfss"):
        try:
            fs, path = pafs.FileSystem.from_uri(text)
            return Location(fs, path.rstrip("/"), text)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError):
            pass  # fall back to fsspec (e.g. s3fs) below
    try:
        import fsspec
    except ImportError as exc:
        raise ArchiverError(
            f"cannot open {text!r}: the {scheme}:// filesystem needs fsspec (pip install fsspec)"
        ) from exc
    try:
        fs, path = fsspec.core.url_to_fs(text)
    except (ImportError, ValueError) as exc:
        raise ArchiverError(f"cannot open {text!r}: {exc}") from exc
    return Location(pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path.rstrip("/"), text)
