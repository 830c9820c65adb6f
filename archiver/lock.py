"""The archive's maintenance lock: one cleanup (compact / expire) at a time.

The lock is ``fcntl.flock`` on a small file, ``<archive>/_archiver.lock`` for a
local archive (hidden from readers by its ``_`` prefix), or a file in the
temporary directory named after the archive's URI for a remote one (which then
only serializes cleanups on this host). The file holds the holder's pid, host
and start time, for the error message a second cleanup shows.

The kernel releases a ``flock`` when its holder dies, even by ``kill -9``, so a
lock left behind by a crashed cleanup is free: the next cleanup takes it over
(and logs whose it was). A clean release empties the file, so a non-empty file
found free is a stale lock.

Lock files and pidfiles are opened by :func:`open_lock_file`, which never follows
a symbolic link and refuses anything but a regular file of ours, so that a lock
path planted by someone else can never make us truncate another file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

from .errors import ArchiverError, LockedError
from .storage import Location

logger = logging.getLogger("archiver.cleanup")

LOCK_NAME = "_archiver.lock"
#: Lock files and pidfiles we write are this small; a bigger one is someone else's.
MAX_LOCK_BYTES = 4096


def lock_path(location: Location) -> str:
    """Where the maintenance lock of the archive at ``location`` lives."""
    if location.local:
        return os.path.join(location.root, LOCK_NAME)
    digest = hashlib.sha1(location.uri.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"archiver-{digest}.lock")


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
    not what we write there (``ours(content)``, default: the lock's holder record).
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
                len(content) > MAX_LOCK_BYTES or not (ours or is_holder_record)(content)
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


def is_holder_record(data: bytes) -> bool:
    """Whether ``data`` is a lock file's holder record (JSON with a pid)."""
    holder = _parse_holder(data)
    return holder is not None and "pid" in holder


def _parse_holder(data: bytes | None) -> dict[str, Any] | None:
    try:
        holder = json.loads(data.decode("utf-8")) if data and data.strip() else None
    except ValueError:  # UnicodeDecodeError too
        return None
    return holder if isinstance(holder, dict) else None


def read_holder(path: str) -> dict[str, Any] | None:
    """The holder recorded in the lock file at ``path`` (None if empty or unreadable)."""
    return _parse_holder(read_lock_file(path))


def describe(holder: dict[str, Any] | None) -> str:
    """``pid 123 on host h since 2026-11-25T16:00:00Z`` (or ``an unknown process``)."""
    if not holder:
        return "an unknown process"
    text = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
    if holder.get("since"):
        text += f" since {holder['since']}"
    return text


class MaintenanceLock:
    """An exclusive, inter-process lock on an archive's maintenance.

    Args:
        location: the archive.
        timeout: seconds to wait for a running cleanup to finish before raising
            :class:`~archiver.errors.LockedError` (0: do not wait).
        poll: seconds between attempts while waiting.
        purpose: recorded in the lock file (``compact``, ``expire``, ``cleanup``).

    Example:
        >>> with MaintenanceLock(location, timeout=10):  # doctest: +SKIP
        ...     ...
    """

    def __init__(
        self, location: Location, *, timeout: float = 0.0, poll: float = 0.1, purpose: str = ""
    ) -> None:
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r}")
        self.location = location
        self.path = lock_path(location)
        self.timeout = timeout
        self.poll = poll
        self.purpose = purpose
        self._fd: int | None = None

    def __repr__(self) -> str:
        return f"MaintenanceLock({self.path!r}, held={self.held})"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, waiting up to ``timeout`` seconds; raises LockedError."""
        if self._fd is not None:
            raise RuntimeError("lock already held by this object")
        fd = open_lock_file(self.path)
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise
                if time.monotonic() >= deadline:
                    raise LockedError(self._locked_message())
                time.sleep(min(self.poll, max(0.0, deadline - time.monotonic())) or 0.001)
            previous = _parse_holder(os.pread(fd, 4096, 0))
            if previous and previous.get("pid") != os.getpid():
                logger.warning(
                    "Took over the stale maintenance lock of %s (%s): that cleanup was "
                    "interrupted; this one finishes its work",
                    self.location.uri,
                    describe(previous),
                )
            record = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "purpose": self.purpose,
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _locked_message(self) -> str:
        holder = read_holder(self.path)
        text = (
            f"archive {self.location.uri} is locked by another cleanup ({describe(holder)}; "
            f"lock file {self.path})"
        )
        host = (holder or {}).get("host")
        pid = (holder or {}).get("pid")
        if host == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
            text += (
                f"; pid {pid} is gone but a process it started still holds the lock: stop that "
                "process"
            )
        else:
            text += "; wait for it to finish or give a longer wait (--wait SECONDS)"
        return text

    def release(self) -> None:
        """Empty the lock file (a clean release) and unlock it."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> MaintenanceLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
