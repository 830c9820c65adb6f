"""Pidfile: an flock-held file that refuses a second live owner and is taken over when stale."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys

import pytest

from archiver.errors import ArchiverError, LockedError
from archiver.pidfile import Pidfile


def test_acquire_writes_our_pid_and_release_removes_it(tmp_path):
    """Acquire writes our pid and release removes it."""
    path = tmp_path / "run.pid"
    with Pidfile(path) as pidfile:
        assert pidfile.held
        assert path.read_text() == f"{os.getpid()}\n"
        assert pidfile.read_pid() == os.getpid()
    assert not path.exists() and not pidfile.held
    pidfile.release()  # twice is harmless


def test_a_second_owner_is_refused_even_in_the_same_process(tmp_path):
    """A second owner is refused even in the same process."""
    path = tmp_path / "run.pid"
    with Pidfile(path):
        with pytest.raises(LockedError, match=rf"another archiver is running \(pid {os.getpid()}"):
            Pidfile(path).acquire()
        assert path.read_text() == f"{os.getpid()}\n"  # the refused one changed nothing
    assert not path.exists()


def test_acquiring_twice_is_an_error(tmp_path):
    """Acquiring twice is an error."""
    with Pidfile(tmp_path / "run.pid") as pidfile, pytest.raises(ArchiverError):
        pidfile.acquire()


def test_a_stale_pidfile_is_taken_over(tmp_path):
    """A stale pidfile is taken over."""
    path = tmp_path / "run.pid"
    path.write_text("4194303\n")
    with Pidfile(path):
        assert path.read_text() == f"{os.getpid()}\n"


@pytest.mark.parametrize("content", [b"4194303\ngarbage\n", b"precious\n", b"\xff" * 10])
def test_a_file_holding_anything_but_a_pid_is_refused(tmp_path, content):
    """A file holding anything but a pid is refused."""
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(ArchiverError, match=f"pidfile {path} holds something archiver did not"):
        Pidfile(path).acquire()
    assert path.read_bytes() == content


def test_the_lock_dies_with_the_process(tmp_path):
    """The lock dies with the process."""
    path = tmp_path / "run.pid"
    code = (
        "import os, sys; from archiver.pidfile import Pidfile; "
        "Pidfile(sys.argv[1]).acquire(); os._exit(0)"  # no cleanup at all
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=60)
    assert path.exists()
    with Pidfile(path):
        pass
    assert not path.exists()


def test_missing_directory(tmp_path):
    """A pidfile in a missing directory is refused with 'cannot create pidfile'."""
    with pytest.raises(ArchiverError, match="cannot create pidfile"):
        Pidfile(tmp_path / "missing" / "run.pid").acquire()


def test_release_leaves_a_file_that_is_no_longer_ours(tmp_path):
    """Release leaves a file that is no longer ours."""
    path = tmp_path / "run.pid"
    pidfile = Pidfile(path)
    pidfile.acquire()
    os.unlink(path)  # someone removed it and another run started
    with Pidfile(path) as other:
        pidfile.release()
        assert path.exists() and other.read_pid() == os.getpid()
    assert not path.exists()


def test_an_owner_leaving_between_open_and_flock_is_detected(tmp_path, monkeypatch):
    """The previous owner unlinks the file after our open(): we must not lock the orphan."""
    path = tmp_path / "run.pid"
    first = Pidfile(path)
    first.acquire()
    real_flock = fcntl.flock
    calls = []

    def flock(fd, op):
        calls.append(fd)
        if len(calls) == 1:
            first.release()  # unlink + unlock, right between our open() and flock()
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    second = Pidfile(path)
    second.acquire()
    assert len(calls) == 2  # the orphaned inode was dropped, the new file locked
    monkeypatch.undo()
    assert path.exists() and second.read_pid() == os.getpid()
    with pytest.raises(LockedError):
        Pidfile(path).acquire()
    second.release()
    assert not path.exists()
