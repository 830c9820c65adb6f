"""archiver.storage: resolving paths and URIs to a filesystem and root, and the primitives
(directories, renames, fsync) the writers build their atomic writes on."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import fsspec
import pyarrow.fs as pafs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archiver.errors import ArchiverError
from archiver.storage import as_pyarrow_fs, fsync_path, redact_uri, resolve

from .helpers import ObjectStore


def test_a_plain_path_is_local_and_absolute(tmp_path, monkeypatch):
    """A relative path is local, made absolute; the URI stays as given."""
    monkeypatch.chdir(tmp_path)
    loc = resolve("archive")
    assert isinstance(loc.fs, pafs.LocalFileSystem)
    assert loc.root == str(tmp_path / "archive") and loc.uri == "archive"
    assert loc.local and loc.atomic_rename and loc.durable
    assert resolve(Path("archive")).root == loc.root


def test_a_file_uri_is_its_path(tmp_path):
    """``file:///x/`` resolves to the local path ``/x``."""
    loc = resolve(f"file://{tmp_path}/archive/")
    assert loc.root == f"{tmp_path}/archive" and loc.atomic_rename
    assert loc.join("tasks", "date=2026-11-25") == f"{tmp_path}/archive/tasks/date=2026-11-25"


def test_a_memory_uri_goes_through_fsspec():
    """``memory://`` is fsspec's filesystem: renames are atomic there, and nothing is fsynced."""
    root = f"memory://storage-{uuid.uuid4().hex}"
    loc = resolve(root)
    assert isinstance(loc.fs, pafs.PyFileSystem) and not loc.local
    assert loc.atomic_rename and not loc.durable
    loc.make_dirs(loc.join("tasks", "date=2026-11-25"))
    with loc.fs.open_output_stream(loc.join("tasks", ".x.tmp")) as f:
        f.write(b"rows")
    loc.rename(loc.join("tasks", ".x.tmp"), loc.join("tasks", "date=2026-11-25", "x.parquet"))
    with loc.fs.open_input_stream(loc.join("tasks", "date=2026-11-25", "x.parquet")) as f:
        assert f.read() == b"rows"
    assert loc.fs.get_file_info(loc.join("tasks", ".x.tmp")).type == pafs.FileType.NotFound


def test_an_object_store_is_not_renamed_into(tmp_path):
    """On an object store a move is a copy: writers must not count on an atomic rename."""
    loc = resolve(f"bucket-{uuid.uuid4().hex}/a", ObjectStore())
    assert not loc.atomic_rename and not loc.durable and loc.root.endswith("/a")


def test_an_explicit_filesystem_overrides_the_scheme(tmp_path, monkeypatch):
    """With ``filesystem=``, the path is the root on it; a local relative one is made absolute."""
    monkeypatch.chdir(tmp_path)
    assert resolve("rel/", pafs.LocalFileSystem()).root == str(tmp_path / "rel")
    memory = fsspec.filesystem("memory")
    loc = resolve("/somewhere/", memory)
    assert loc.root == "/somewhere" and isinstance(loc.fs, pafs.PyFileSystem)


def test_an_unknown_scheme_is_one_line_naming_it():
    """A URI no filesystem implements raises ArchiverError naming the URI, not an ImportError."""
    with pytest.raises(ArchiverError, match=r"^cannot open nosuchfs://bucket/x: .*nosuchfs") as e:
        resolve("nosuchfs://bucket/x")
    assert "\n" not in str(e.value)


def test_as_pyarrow_fs_takes_pyarrow_and_fsspec_only():
    """A pyarrow filesystem is kept, an fsspec one wrapped, anything else refused by type name."""
    local = pafs.LocalFileSystem()
    assert as_pyarrow_fs(local) is local
    assert isinstance(as_pyarrow_fs(fsspec.filesystem("memory")), pafs.PyFileSystem)
    with pytest.raises(TypeError, match="got str"):
        as_pyarrow_fs("/tmp")


def test_make_dirs_creates_every_missing_parent(tmp_path):
    """make_dirs creates a nested directory on a local archive and accepts one that exists."""
    loc = resolve(tmp_path / "a")
    target = loc.join("tasks", "date=2026-11-25", "hour=15")
    loc.make_dirs(target)
    assert os.path.isdir(target)
    loc.make_dirs(target)
    assert os.path.isdir(target)


def test_rename_replaces_and_syncs(tmp_path):
    """rename moves a file over an existing one (the new content wins, the source is gone)."""
    loc = resolve(tmp_path)
    (tmp_path / ".new.tmp").write_bytes(b"new")
    (tmp_path / "file.parquet").write_bytes(b"old")
    loc.rename(loc.join(".new.tmp"), loc.join("file.parquet"))
    assert (tmp_path / "file.parquet").read_bytes() == b"new"
    assert not (tmp_path / ".new.tmp").exists()


def test_fsync_of_files_folders_and_what_is_gone(tmp_path):
    """fsync works on a file and a folder; a missing path raises, a gone parent is skipped."""
    (tmp_path / "f").write_bytes(b"x")
    fsync_path(str(tmp_path / "f"))
    fsync_path(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        fsync_path(str(tmp_path / "missing"))
    loc = resolve(tmp_path)
    loc.sync_parents([loc.join("gone", "file.parquet")])  # removed since: nothing to sync
    loc.sync(loc.join("f"))


_SECRET_CHARS = "abcXYZ0189/+=?#:@%!$&()*,;~-._"


@settings(max_examples=200, deadline=None)
@given(st.text(_SECRET_CHARS, min_size=8, max_size=40).filter(lambda s: set(s) & set("/+?#@")))
def test_redact_uri_masks_secrets_with_any_url_character(secret):
    """A secret holding '/', '+', '?', '#' or '@' (AWS secrets often do) is masked whole."""
    for text in (
        f"s3://AKIAKEY:{secret}@bucket/x?endpoint_override=h:1&scheme=http",
        f"Error: cannot open s3://AKIAKEY:{secret}@bucket/x: denied",
    ):
        shown = redact_uri(text)
        assert secret not in shown and "AKIAKEY" not in shown, shown
        assert "***@bucket/x" in shown, shown


@pytest.mark.parametrize(
    "text",
    [
        "s3://b is not an archive but holds one: did you mean s3://b/p?",
        "cannot reach the archive s3://b/p?secret_key=***: When listing",
        "see s3://b/p.",
    ],
)
def test_redact_uri_keeps_the_punctuation_after_a_uri(text):
    """The '?', ':' or '.' that ends a sentence after a URI is not eaten by the masking."""
    assert redact_uri(text) == text


def test_a_uri_whose_credentials_need_percent_encoding_is_refused():
    """``s3://KEY:a/b@bucket`` (an unencoded '/' in the secret) is refused, the secret masked."""
    with pytest.raises(ArchiverError, match=r"percent-encode") as info:
        resolve("s3://AKIAKEY:wJalr/XUtnFEMI+K7MDENG@bucket/x")
    assert "XUtnFEMI" not in str(info.value) and "wJalr" not in str(info.value)
    assert "s3://***@bucket/x" in str(info.value)


@pytest.mark.parametrize(
    "uri", ["s3://KEY:SECRET@bucket/p", "s3://bucket/p?endpoint_override=127.0.0.1:1"]
)
def test_credentials_in_the_uri_and_storage_options_are_refused_together(uri):
    """A URI carrying credentials or options plus ``storage_options=`` is one masked error."""
    with pytest.raises(ArchiverError, match="either in the URI or in storage_options") as e:
        resolve(uri, storage_options={"key": "other"})
    assert "SECRET" not in str(e.value)
