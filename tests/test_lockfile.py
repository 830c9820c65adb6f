"""Locks and pidfiles never follow a symlink and never write anything but their own file."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from archiver.cli import cli
from archiver.errors import ArchiverError, LockedError
from archiver.lockfile import (
    open_lock_file,
    pid_alive,
    read_lock_file,
    try_lock,
    unlock,
    write_record,
)
from archiver.maintenance.lock import MaintenanceLock, lock_path, read_holder
from archiver.pidfile import Pidfile
from archiver.storage import resolve

from .helpers import SMALL, invoke

ROOT = Path(__file__).resolve().parent.parent
SECRET = b"root:$6$precious-password-hash:19000:0:99999:7:::\n"


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "archive"
    result = invoke("record", "--quiet", "--replay", SMALL, "--archive", path)
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture
def archive(template, tmp_path) -> Path:
    shutil.copytree(template, tmp_path / "archive")
    return tmp_path / "archive"


def plant(kind: str, path: Path, target: Path) -> str:
    """Put a ``kind`` of trap at ``path``; returns the expected message after the path."""
    if kind == "symlink":
        target.write_bytes(SECRET)
        path.symlink_to(target)
        return "is a symbolic link: refusing to follow it; remove it"
    if kind == "dangling symlink":
        path.symlink_to(target)
        return "is a symbolic link: refusing to follow it; remove it"
    if kind == "hard link":
        target.write_bytes(SECRET)
        os.link(target, path)
        return "has 2 hard links: refusing to write a file shared with another path"
    if kind == "fifo":
        os.mkfifo(path)
        return "is a FIFO, not a regular file"
    if kind == "directory":
        path.mkdir()
        (path / "inside").write_bytes(SECRET)
        return "is a directory, not a file"
    if kind == "foreign owner":
        path.write_bytes(SECRET)
        os.chown(path, 65534, 65534)
        return "is owned by uid 65534, not by this user (uid 0): remove it"
    if kind in ("foreign content", "big file"):  # e.g. a mistyped --pidfile notes.txt
        path.write_bytes(SECRET if kind == "foreign content" else b"4242\n" * 2000)
        return "holds something archiver did not write: refusing to overwrite it"
    raise AssertionError(kind)


def untouched(kind: str, path: Path, target: Path) -> None:
    """Nothing was written, created or removed by the refused lock."""
    if kind in ("symlink", "hard link"):
        assert target.read_bytes() == SECRET
    if kind == "dangling symlink":
        assert not target.exists() and not os.path.lexists(target)
    if kind in ("symlink", "dangling symlink"):
        assert path.is_symlink() and os.readlink(path) == str(target)
    if kind == "fifo":
        assert path.is_fifo()
    if kind == "directory":
        assert [p.name for p in path.iterdir()] == ["inside"]
        assert (path / "inside").read_bytes() == SECRET
    if kind == "foreign owner":
        assert path.read_bytes() == SECRET and path.stat().st_uid == 65534
    if kind == "foreign content":
        assert path.read_bytes() == SECRET
    if kind == "big file":
        assert path.read_bytes() == b"4242\n" * 2000


KINDS = [
    "symlink",
    "dangling symlink",
    "hard link",
    "fifo",
    "directory",
    "foreign content",
    "big file",
    pytest.param(
        "foreign owner",
        marks=pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown"),
    ),
]


@pytest.mark.parametrize("kind", KINDS)
def test_maintenance_lock_refuses_a_trap(archive, tmp_path, kind):
    """Maintenance lock refuses a trap."""
    location = resolve(str(archive))
    path, target = Path(lock_path(location)), tmp_path / "target"
    message = plant(kind, path, target)
    with pytest.raises(ArchiverError) as exc:
        MaintenanceLock(location).acquire()
    assert str(exc.value) == f"lock file {path} {message}"
    assert not isinstance(exc.value, LockedError)
    untouched(kind, path, target)


@pytest.mark.parametrize("command", ["compact", "expire"])
@pytest.mark.parametrize("kind", KINDS)
def test_cleanup_commands_refuse_a_trapped_lock_in_one_line(archive, tmp_path, kind, command):
    """Cleanup commands refuse a trapped lock in one line."""
    path, target = archive / "_archiver.lock", tmp_path / "target"
    message = plant(kind, path, target)
    files = sorted(p for p in archive.rglob("*") if p.is_file() and p != path)
    args = ["--older-than", "1s", "--yes"] if command == "expire" else []
    result = invoke(command, "--archive", archive, "--wait", "0", *args)
    assert result.exit_code == 1, result.output
    assert result.output == f"Error: lock file {path} {message}\n"
    untouched(kind, path, target)
    assert sorted(p for p in archive.rglob("*") if p.is_file() and p != path) == files


@pytest.mark.parametrize("kind", KINDS)
def test_pidfile_refuses_a_trap(tmp_path, kind):
    """A pidfile refuses each trap in one line, writes nothing, and reads no pid from it."""
    path, target = tmp_path / "run.pid", tmp_path / "target"
    message = plant(kind, path, target)
    with pytest.raises(ArchiverError) as exc:
        Pidfile(path).acquire()
    assert str(exc.value) == f"pidfile {path} {message}"
    untouched(kind, path, target)
    assert Pidfile(path).read_pid() is None  # never blocks on a FIFO, never follows


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "directory"])
def test_record_refuses_a_trapped_pidfile_in_one_line(tmp_path, kind):
    """(A directory is refused by click's own ``--pidfile`` check before we open it.)"""
    path, target = tmp_path / "run.pid", tmp_path / "target"
    message = plant(kind, path, target)
    archive = tmp_path / "archive"
    result = CliRunner().invoke(
        cli, ["record", "--quiet", "--replay", SMALL, "--archive", archive, "--pidfile", path]
    )
    assert result.exit_code == 1, result.output
    assert result.stderr == f"Error: pidfile {path} {message}\n"
    untouched(kind, path, target)
    assert not archive.exists()  # refused before recording anything


def test_read_holder_never_blocks_or_follows(tmp_path):
    """Read holder never blocks or follows."""
    fifo, link = tmp_path / "fifo", tmp_path / "link"
    os.mkfifo(fifo)
    target = tmp_path / "target"
    target.write_text(json.dumps({"pid": 1, "host": "h"}))
    link.symlink_to(target)
    assert read_holder(str(fifo)) is None
    assert read_holder(str(link)) is None
    assert read_holder(str(target)) == {"pid": 1, "host": "h"}


def test_lock_fd_is_not_inherited(tmp_path):
    """Lock fd is not inherited."""
    fd = open_lock_file(str(tmp_path / "x.lock"))
    try:
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)


HOLDER = textwrap.dedent(
    """
    import sys, time
    from archiver.maintenance.lock import MaintenanceLock
    from archiver.storage import resolve
    MaintenanceLock(resolve(sys.argv[1]), purpose="holder").acquire()
    print("locked", flush=True)
    time.sleep(60)
    """
)


def test_a_refused_lock_leaves_the_holders_file_as_it_is(archive):
    """Only the holder of the flock truncates: a second cleanup that waits writes nothing."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(archive)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        path = Path(lock_path(resolve(str(archive))))
        before = path.read_bytes()
        assert json.loads(before)["pid"] == proc.pid
        result = invoke("compact", "--archive", archive, "--wait", "0")
        assert result.exit_code == 1
        assert re.search(rf"locked by another cleanup \(pid {proc.pid} ", result.output)
        assert path.read_bytes() == before
    finally:
        proc.kill()
        proc.wait()


def test_symlinked_directories_above_the_lock_are_fine(archive, tmp_path):
    """Only the last component must not be a link: /var/run -> /run, data -> /mnt/big work."""
    linked = tmp_path / "linked-archive"
    linked.symlink_to(archive)
    result = invoke("compact", "--archive", linked, "--wait", "0")
    assert result.exit_code == 0, result.output
    assert (archive / "_archiver.lock").is_file() and not (archive / "_archiver.lock").is_symlink()
    rundir = tmp_path / "run"
    rundir.mkdir()
    (tmp_path / "var-run").symlink_to(rundir)
    with Pidfile(tmp_path / "var-run" / "rec.pid"):
        assert (rundir / "rec.pid").read_text() == f"{os.getpid()}\n"
    assert not (rundir / "rec.pid").exists()


# -- archiver.lockfile itself ------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_open_lock_file_refuses_a_trap(tmp_path, kind):
    """open_lock_file refuses each trap in one line naming the path, and writes nothing."""
    path, target = tmp_path / "x.lock", tmp_path / "target"
    message = plant(kind, path, target)
    with pytest.raises(ArchiverError) as exc:
        open_lock_file(str(path), "lock file", ours=lambda content: content == b"ours\n")
    assert str(exc.value) == f"lock file {path} {message}"
    untouched(kind, path, target)


def test_one_holder_at_a_time_and_the_record_replaced(tmp_path):
    """A second open file cannot take a held flock until it is unlocked; records replace."""
    path = str(tmp_path / "x.lock")
    first = open_lock_file(path, ours=lambda content: content.startswith(b"pid "))
    assert try_lock(first)
    write_record(first, "pid 1 and a long tail\n")
    write_record(first, "pid 2\n")
    assert read_lock_file(path) == b"pid 2\n"
    second = open_lock_file(path, ours=lambda content: content.startswith(b"pid "))
    try:
        assert not try_lock(second)
        unlock(first)
        assert try_lock(second)
    finally:
        unlock(second)
    with pytest.raises(OSError):
        os.fstat(first)  # unlock closed it


def test_our_own_content_is_accepted_and_someone_elses_refused(tmp_path):
    """A lock file holding what ``ours`` recognises opens; any content without ``ours`` does not."""
    path = tmp_path / "x.lock"
    path.write_bytes(b"pid 7\n")
    os.close(open_lock_file(str(path), ours=lambda content: content == b"pid 7\n"))
    with pytest.raises(ArchiverError, match="holds something archiver did not write"):
        open_lock_file(str(path))
    with pytest.raises(ArchiverError, match=r"cannot create lock file .*: No such file"):
        open_lock_file(str(tmp_path / "missing" / "x.lock"))


def test_read_lock_file_of_what_is_not_a_regular_file(tmp_path):
    """read_lock_file returns None for a missing path, a FIFO and a symlink, never blocking."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "real").write_bytes(b"pid 1\n")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert read_lock_file(str(tmp_path / "missing")) is None
    assert read_lock_file(str(tmp_path / "fifo")) is None
    assert read_lock_file(str(tmp_path / "link")) is None
    assert read_lock_file(str(tmp_path / "real"), limit=3) == b"pid"


def test_pid_alive_of_this_a_finished_and_an_impossible_process():
    """This process is alive; a child that exited and pids 0 and -1 are not."""
    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not pid_alive(child.pid)
    assert not pid_alive(0) and not pid_alive(-1)
