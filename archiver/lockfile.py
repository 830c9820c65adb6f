"""Lock files: opened safely, locked with ``fcntl.flock``, released; the one home of flock.

Lock files and pidfiles are opened by :func:`open_lock_file`, which never follows
a symbolic link and refuses anything but a regular file of ours, so that a lock
path planted by someone else can never make us truncate another file. The kernel
releases a ``flock`` when its holder dies, even by ``kill -9``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Callable

from .errors import ArchiverError

#: Lock files and pidfiles we write are this small; a bigger one is someone else's.
MAX_LOCK_BYTES = 4096


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def open_lock_file(
    path: str, what: str = "lock file", ours: Callable[[bytes], bool] | None = None
) -> int:
    """Open ``path`` read-write (created if missing) as a lock file; returns its fd.

    Refuses, with a one-line :class:`ArchiverError` naming the path, a symbolic
    link (dangling or not), anything but a regular file (FIFO, directory,
    device), a file with other hard links, a file owned by neither this user,
    root nor the owner of its directory, and a non-empty file whose content is
    not what we write there (``ours(content)``; without ``ours``, any content:
    the maintenance lock passes its holder record check, the pidfile its pid check).
    Nothing is written here: the caller truncates only after its ``flock`` is
    held, and only this fd.
    """
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    try:
        fd = os.open(path, flags | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ArchiverError(
                f"{what} {path} is a symbolic link: refusing to follow it; remove it"
            ) from None
        if exc.errno == errno.EISDIR:
            raise ArchiverError(f"{what} {path} is a directory, not a file") from None
        verb = "create" if exc.errno == errno.ENOENT else "open"
        raise ArchiverError(f"cannot {verb} {what} {path}: {exc.strerror or exc}") from None
    try:
        problem = _lock_file_problem(path, os.fstat(fd))
        if problem is None:
            content = os.pread(fd, MAX_LOCK_BYTES + 1, 0)
            if content.strip() and (
                len(content) > MAX_LOCK_BYTES or ours is None or not ours(content)
            ):
                problem = "holds something archiver did not write: refusing to overwrite it"
        if problem:
            raise ArchiverError(f"{what} {path} {problem}")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lock_file_problem(path: str, st: os.stat_result) -> str | None:
    """Why the opened file at ``path`` is not one to lock and write, or None."""
    if not stat.S_ISREG(st.st_mode):
        kind = {
            stat.S_IFDIR: "a directory",
            stat.S_IFIFO: "a FIFO",
            stat.S_IFSOCK: "a socket",
            stat.S_IFCHR: "a character device",
            stat.S_IFBLK: "a block device",
        }.get(stat.S_IFMT(st.st_mode), "not a regular file")
        return f"is {kind}, not a regular file"
    if st.st_nlink > 1:
        return f"has {st.st_nlink} hard links: refusing to write a file shared with another path"
    euid = os.geteuid()
    if st.st_uid not in (euid, 0):
        try:
            dir_owner = os.stat(os.path.dirname(os.path.abspath(path))).st_uid
        except OSError:
            dir_owner = None
        if st.st_uid != dir_owner:
            return f"is owned by uid {st.st_uid}, not by this user (uid {euid}): remove it"
    return None


def read_lock_file(path: str, limit: int = 4096) -> bytes | None:
    """The first ``limit`` bytes of the regular file ``path`` (None if not one, never blocks)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.pread(fd, limit, 0)
    except OSError:
        return None
    finally:
        os.close(fd)


def try_lock(fd: int) -> bool:
    """Take the exclusive ``flock`` of ``fd`` without waiting; False if another holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        return False
    return True


def write_record(fd: int, text: str) -> None:
    """Replace the content of the locked file ``fd`` with ``text``."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)


def unlock(fd: int) -> None:
    """Drop the ``flock`` of ``fd`` and close it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
