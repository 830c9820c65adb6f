"""Resolve an archive path or URI to a pyarrow filesystem and a root path."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs

from .errors import ArchiverError


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
        return self.fs.type_name not in ("s3", "gcs", "abfs", "hdfs")

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts]) if self.root else "/".join(parts)


def resolve(archive: str | os.PathLike[str], filesystem: pafs.FileSystem | None = None) -> Location:
    """Turn ``archive`` (a local path or a URI such as ``s3://bucket/x``) into a Location."""
    text = os.fspath(archive)
    if filesystem is not None:
        return Location(filesystem, text.rstrip("/"), text)
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
        except (pafs.ArrowInvalid, pafs.ArrowNotImplementedError, OSError, ValueError):
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
