"""A pidfile held with an OS lock, so a dead process never blocks the next run."""

from __future__ import annotations

import contextlib
import os
import re

from .errors import ArchiverError, LockedError
from .lockfile import open_lock_file, read_lock_file, try_lock, write_record


def is_pid(data: bytes) -> bool:
    """Whether ``data`` is what a pidfile holds: a pid and a newline."""
    return re.fullmatch(rb"\s*[0-9]{1,10}\s*", data) is not None


class Pidfile:
    """``with Pidfile(path):`` refuses to start while another live process holds ``path``.

    The lock (``fcntl.flock`` on the file) dies with its process, so a stale
    pidfile left by a crash or ``kill -9`` is taken over; the file is removed on a
    clean exit. The file holds the owner's pid, for ``kill $(cat path)``.

    A symbolic link, FIFO, directory, another user's file or a file holding
    anything but a pid at ``path`` is a one-line :class:`~archiver.errors.ArchiverError`
    (see :func:`archiver.lockfile.open_lock_file`); only our own regular file is written.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def read_pid(self) -> int | None:
        """The pid written in the file, or None."""
        data = read_lock_file(self.path, 32) or b""
        return int(data) if is_pid(data) else None

    def acquire(self) -> None:
        """Take the lock and write our pid; raise LockedError if a live process holds it."""
        if self._fd is not None:
            raise ArchiverError(f"pidfile {self.path} is already held by this process")
        for _ in range(10):
            fd = open_lock_file(self.path, "pidfile", is_pid)
            try:
                locked = try_lock(fd)
            except OSError as exc:
                os.close(fd)
                raise ArchiverError(
                    f"cannot lock pidfile {self.path}: {exc.strerror or exc}"
                ) from exc
            if not locked:
                os.close(fd)
                holder = self.read_pid()
                raise LockedError(
                    f"another archiver is running (pid {holder or 'unknown'}, "
                    f"pidfile {self.path}); stop it or use another pidfile"
                ) from None
            # The previous owner may have removed the file between our open() and
            # flock(): then we locked an orphaned inode and must start again (and a
            # symlink put there meanwhile is refused by the next open).
            try:
                same = os.path.samestat(os.fstat(fd), os.lstat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            write_record(fd, f"{os.getpid()}\n")
            self._fd = fd
            return
        raise LockedError(f"could not lock pidfile {self.path}: it keeps being replaced")

    def release(self) -> None:
        """Remove the file (if it is still ours) and drop the lock."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):
                if os.path.samestat(os.fstat(fd), os.lstat(self.path)):
                    os.unlink(self.path)
        finally:
            os.close(fd)  # drops the flock; the file, unlinked, no longer matters

    def __enter__(self) -> Pidfile:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
