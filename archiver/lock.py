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
import tempfile
import time
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

from .errors import LockedError
from .storage import Location

logger = logging.getLogger("archiver.cleanup")

LOCK_NAME = "_archiver.lock"


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


def read_holder(path: str) -> dict[str, Any] | None:
    """The holder recorded in the lock file at ``path`` (None if empty or unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except OSError:
        return None
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


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
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
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
            previous = read_holder(self.path)
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
