"""A pidfile held with an OS lock, so a dead process never blocks the next run."""

from __future__ import annotations

import fcntl
import os

from .errors import LockedError


class Pidfile:
    """``with Pidfile(path):`` refuses to start while another live process holds ``path``.

    The lock (``fcntl.flock``) dies with its process, so a stale pidfile left by a
    crash is taken over; the file is removed on a clean exit.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(
                f"another archiver is running (pid {holder}, pidfile {self.path}); "
                "stop it or use another --pidfile"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> Pidfile:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
