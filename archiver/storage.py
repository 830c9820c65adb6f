"""Resolve an archive path or URI to a pyarrow filesystem and a root path."""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlparse, urlunparse

import pyarrow as pa
import pyarrow.fs as pafs

from .errors import ArchiverError

#: Seconds pyarrow's GCS client retries before an operation fails (its default: 900).
GCS_RETRY_SECONDS = 10

#: Filesystems where ``move`` is a real rename (atomic): write a hidden temporary
#: file, then rename it. Elsewhere (object stores) a move is a copy, and an upload
#: only becomes visible once complete, so files are written under their final name.
_RENAMING = frozenset({"local", "file", "memory", "mock"})
#: Object stores: no directories, so no ``create_dir`` (it writes ``dir/`` marker
#: objects, on which other readers, e.g. ``pandas.read_parquet`` via s3fs, fail).
_OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl", "oss"})
#: Query parameters and user info that carry credentials, masked by :func:`redact_uri`.
_SECRET_PARAM = re.compile(r"key|secret|token|passw|credential|signature|^sig$|sas", re.I)
MASK = "***"
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


def redact_uri(text: str) -> str:
    """``text`` with the credentials of every URI in it masked: user info and secret
    query parameters.

    ``s3://key:secret@bucket/x?secret_key=s&scheme=http`` reads
    ``s3://***@bucket/x?secret_key=***&scheme=http``. Every message, summary and log
    line that shows an archive's URI shows this form; a local path is returned as is.
    An error message that quotes a URI is masked the same way.
    """
    return _URI.sub(lambda m: _redact_one(m.group(0)), text)


_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


#: Punctuation that ends a sentence after a URI rather than belonging to it.
_TRAILING = ".,;:?!)"


def _user_info(uri: str) -> str:
    """What a reader would take as ``uri``'s credentials: all up to its last ``@``.

    Not urlparse's netloc: an AWS secret often holds ``/`` or ``+``, and a ``/``, ``?``
    or ``#`` in it would end the netloc early and leave the secret in the path.
    """
    user, at, _ = uri.partition("://")[2].rpartition("@")
    return user if at and (":" in user.split("/", 1)[0] or "/" not in user) else ""


def _redact_one(uri: str) -> str:
    body = uri.rstrip(_TRAILING)
    tail = uri[len(body) :]
    scheme, _, rest = body.partition("://")
    if _user_info(body):
        rest = f"{MASK}@{rest.rpartition('@')[2]}"
    try:
        parts = urlparse(f"{scheme}://{rest}")
    except ValueError:  # e.g. an invalid IPv6 netloc: show nothing that might be secret
        return MASK + tail
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        masked = [(k, MASK if _SECRET_PARAM.search(k) else v) for k, v in pairs]
        query = urlencode(masked, safe="*:/")
    return urlunparse(parts._replace(query=query)) + tail


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


def _endpoint(fs: pafs.FileSystem) -> str:
    """The endpoint of an object store's filesystem ('' if unknown or default)."""
    if isinstance(fs, pafs.SubTreeFileSystem):
        return _endpoint(fs.base_fs)
    if isinstance(fs, pafs.S3FileSystem):
        kwargs = fs.__reduce__()[1][0]  # pyarrow keeps no public accessor for it
        return str(kwargs.get("endpoint_override") or "")
    if isinstance(fs, pafs.PyFileSystem):
        inner = getattr(fs.handler, "fs", None)
        client = getattr(inner, "client_kwargs", None) or {}
        return str(client.get("endpoint_url") or getattr(inner, "endpoint_url", None) or "")
    return ""


@dataclass(frozen=True)
class Location:
    """A filesystem and the archive's root path on it.

    ``uri`` is the archive as given with its credentials masked (see :func:`redact_uri`):
    the form every message shows. ``key`` names the archive's storage canonically, the
    same for two spellings of one URI (it keys the local maintenance lock).
    """

    fs: pafs.FileSystem
    root: str
    uri: str
    key: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "uri", redact_uri(self.uri))
        if not self.key:
            protocol = "+".join(sorted(_protocols(self.fs)))
            endpoint = _endpoint(self.fs).removeprefix("http://").removeprefix("https://")
            root = re.sub("/+", "/", self.root.strip("/"))
            object.__setattr__(self, "key", f"{protocol}://{endpoint.rstrip('/')}/{root}")

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def object_store(self) -> bool:
        """Whether the storage is an object store (S3, GCS, Azure): no directories."""
        return bool(_protocols(self.fs) & _OBJECT_STORES)

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
        if self.object_store:
            return  # keys need no parent: a directory would be a marker object
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


def resolve(
    archive: str | os.PathLike[str],
    filesystem: Any = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Location:
    """Turn ``archive`` (a local path or a URI such as ``s3://bucket/x``) into a Location.

    ``filesystem`` (a pyarrow or fsspec filesystem) overrides the scheme: then
    ``archive`` is the root path on it. ``storage_options`` are passed to fsspec
    (``s3fs``: ``key``, ``secret``, ``client_kwargs={"endpoint_url": ...}``), whose
    filesystem pyarrow then uses.
    """
    text = os.fspath(archive)
    if filesystem is not None and storage_options is not None:
        raise ValueError("give filesystem or storage_options, not both")
    if storage_options is not None:
        if "://" in text and (_user_info(text) or urlparse(text).query):
            raise ArchiverError(
                f"{redact_uri(text)}: give the credentials and options either in the URI or "
                "in storage_options, not both"
            )
        s3 = _s3_location(text, dict(storage_options))
        return s3 if s3 is not None else _fsspec_location(text, dict(storage_options))
    if filesystem is not None:
        fs = as_pyarrow_fs(filesystem)
        root = text.rstrip("/")
        if isinstance(fs, pafs.LocalFileSystem) and "://" not in text:
            root = os.path.abspath(text)
        return Location(fs, root, text)
    scheme = urlparse(text).scheme
    user = _user_info(text) if scheme and len(scheme) > 1 else ""
    if user and user != urlparse(text).netloc.rpartition("@")[0]:
        raise ArchiverError(
            f"cannot read the credentials in {redact_uri(text)}: percent-encode a '/', '?' "
            "or '#' in them (%2F, %3F, %23), or give them in the environment"
        )
    if not scheme or len(scheme) == 1:  # a plain path (or a Windows drive letter)
        return Location(pafs.LocalFileSystem(), os.path.abspath(text), text)
    if scheme == "file":
        fs, path = pafs.FileSystem.from_uri(text)
        return Location(fs, path.rstrip("/") or "/", text)
    if scheme in ("s3", "s3a") and _has_s3fs():
        path, options = s3fs_options(text)
        s3 = _s3_location(f"s3://{path}", options, shown=text)
        return s3 if s3 is not None else _fsspec_location(f"s3://{path}", options, shown=text)
    if scheme in ("s3", "gs", "gcs", "hdfs", "abfs", "abfss"):
        native = text
        if scheme in ("gs", "gcs") and "retry_limit_seconds=" not in text:
            # pyarrow's GCS client retries for 15 minutes by default (no credentials: it
            # keeps asking for a token); fail within seconds, as the S3 client does.
            native += f"{'&' if '?' in text else '?'}retry_limit_seconds={GCS_RETRY_SECONDS}"
        try:
            fs, path = pafs.FileSystem.from_uri(native)
            return Location(fs, path.rstrip("/"), text)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError):
            pass  # fall back to fsspec (e.g. s3fs) below
    return _fsspec_location(text, {})


class S3Handler(pafs.FileSystemHandler):  # type: ignore[misc]  # pyarrow has no stubs
    """pyarrow's S3 filesystem, with deletes through s3fs.

    pyarrow's S3 filesystem reads and writes about 6x faster than s3fs wrapped for
    pyarrow (``bench/bench_s3.py``, compaction), but its ``delete_file`` and
    ``delete_dir`` write a zero-byte ``dir/`` marker object for each folder they
    empty, and its ``create_dir`` writes one too: other readers (``pandas.read_parquet``
    through s3fs) then fail. So deletes go through s3fs, and folders are not created.
    """

    def __init__(self, native: pafs.FileSystem, fs: Any) -> None:
        self.native = native
        self.fs = fs  # the s3fs filesystem: its protocol and client (lock object) too

    def __eq__(self, other: object) -> bool:
        return isinstance(other, S3Handler) and other.native.equals(self.native)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "s3"

    def normalize_path(self, path: str) -> str:
        return str(self.native.normalize_path(path))

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return list(self.native.get_file_info(paths))

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return list(self.native.get_file_info(selector))

    def create_dir(self, path: str, recursive: bool) -> None:
        return None  # keys need no folder

    def delete_dir(self, path: str) -> None:
        self.fs.rm(path, recursive=True)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.rm(self.fs.find(path), recursive=False) if self.fs.find(path) else None

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the contents of the whole store")

    def delete_file(self, path: str) -> None:
        if not self.fs.exists(path):
            raise FileNotFoundError(path)
        self.fs.rm_file(path)

    def move(self, src: str, dest: str) -> None:
        self.native.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.native.copy_file(src, dest)

    def open_input_stream(self, path: str) -> Any:
        return self.native.open_input_stream(path)

    def open_input_file(self, path: str) -> Any:
        return self.native.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        return self.native.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        return self.native.open_append_stream(path, metadata=metadata)


#: s3fs options that have a pyarrow S3FileSystem equivalent (others: s3fs alone).
_NATIVE_OPTIONS = frozenset({"key", "secret", "token", "client_kwargs", "use_listings_cache"})


def _s3_location(text: str, options: dict[str, Any], shown: str | None = None) -> Location | None:
    """An ``s3://`` archive through :class:`S3Handler`, None if the options need s3fs alone."""
    parts = urlparse(text)
    client = dict(options.get("client_kwargs") or {})
    if parts.scheme not in ("s3", "s3a") or set(options) - _NATIVE_OPTIONS:
        return None
    if set(client) - {"endpoint_url", "region_name"} or not _has_s3fs():
        return None
    kwargs: dict[str, Any] = {}
    for option, name in (
        ("key", "access_key"),
        ("secret", "secret_key"),
        ("token", "session_token"),
    ):
        if options.get(option):
            kwargs[name] = options[option]
    endpoint = (
        client.get("endpoint_url")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    if endpoint:
        scheme, _, host = str(endpoint).rpartition("://")
        kwargs["endpoint_override"] = host or endpoint
        if scheme:
            kwargs["scheme"] = scheme
    if client.get("region_name"):
        kwargs["region"] = client["region_name"]
    location = _fsspec_location(text, options, shown=shown)
    try:
        native = pafs.S3FileSystem(**kwargs)
    except (pa.ArrowInvalid, OSError, ValueError):
        return location
    handler = S3Handler(native, location.fs.handler.fs)
    return Location(pafs.PyFileSystem(handler), location.root, location.uri)


def _has_s3fs() -> bool:
    try:
        import s3fs  # noqa: F401
    except ImportError:
        return False
    return True


def s3fs_options(uri: str) -> tuple[str, dict[str, Any]]:
    """``bucket/path`` and the s3fs options of an ``s3://`` URI in pyarrow's form.

    ``s3://KEY:SECRET@bucket/x?endpoint_override=host:port&scheme=http&region=r``
    (also ``access_key=``, ``secret_key=``, ``session_token=``). s3fs, unlike
    pyarrow's S3 filesystem, deletes an object without writing a ``dir/`` marker
    object for its emptied parent (other readers fail on those); the endpoint and
    credentials are otherwise read from the ``AWS_*`` environment by botocore.
    """
    parts = urlparse(uri)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    options: dict[str, Any] = {}
    client: dict[str, Any] = {}
    if parts.username:
        options["key"] = unquote(parts.username)
    if parts.password:
        options["secret"] = unquote(parts.password)
    for name, option in (
        ("access_key", "key"),
        ("secret_key", "secret"),
        ("session_token", "token"),
    ):
        if name in query:
            options[option] = query.pop(name)
    endpoint = query.pop("endpoint_override", None)
    scheme = query.pop("scheme", "https")
    if endpoint:
        client["endpoint_url"] = endpoint if "://" in endpoint else f"{scheme}://{endpoint}"
    if "region" in query:
        client["region_name"] = query.pop("region")
    if query:
        raise ArchiverError(
            f"cannot open {redact_uri(uri)}: unknown option(s) {', '.join(sorted(query))} "
            "(known: endpoint_override, scheme, region, access_key, secret_key, session_token)"
        )
    if client:
        options["client_kwargs"] = client
    host = parts.hostname or ""
    return f"{host}{parts.path}".rstrip("/"), options


def _fsspec_location(text: str, options: dict[str, Any], shown: str | None = None) -> Location:
    """The Location of ``text`` through fsspec, with ``options`` for its filesystem."""
    shown = redact_uri(shown or text)
    try:
        import fsspec
    except ImportError as exc:
        raise ArchiverError(
            f"cannot open {shown}: this filesystem needs fsspec (pip install fsspec)"
        ) from exc
    if urlparse(text).scheme in ("s3", "s3a", "gs", "gcs", "abfs", "az"):
        # Listings must be fresh: another process (a recorder, a cleanup) changes them.
        options.setdefault("use_listings_cache", False)
    try:
        fs, path = fsspec.core.url_to_fs(text, **options)
    except (ImportError, ValueError, TypeError) as exc:
        raise ArchiverError(f"cannot open {shown}: {redact_uri(str(exc))}") from exc
    if not urlparse(text).scheme or len(urlparse(text).scheme) == 1:
        path = os.path.abspath(path)
    return Location(pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path.rstrip("/"), shown)
