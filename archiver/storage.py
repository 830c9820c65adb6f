"""Resolve an archive path or URI to a pyarrow filesystem and a root path."""

from __future__ import annotations

import os
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

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts]) if self.root else "/".join(parts)


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
