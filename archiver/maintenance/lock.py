"""The archive's maintenance lock: one cleanup (compact / expire) at a time.

The lock is ``fcntl.flock`` on a small file, ``<archive>/_archiver.lock`` for a
local archive (hidden from readers by its ``_`` prefix), or a file in the
temporary directory named after the archive's canonical URI for a remote one
(:attr:`~archiver.storage.Location.key`: two spellings of one archive share it).
That only serializes cleanups on this host: two hosts cleaning one bucket are made
safe by the reading-side rule of :mod:`archiver.layout`. The file holds the holder's pid, host
and start time, for the error message a second cleanup shows.

The kernel releases a ``flock`` when its holder dies, even by ``kill -9``, so a
lock left behind by a crashed cleanup is free: the next cleanup takes it over
(and logs whose it was). A clean release empties the file, so a non-empty file
found free is a stale lock.

The lock file is opened, locked and released with :mod:`archiver.lockfile`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

from ..errors import LockedError
from ..lockfile import open_lock_file, pid_alive, read_lock_file, try_lock, unlock, write_record
from ..storage import Location

logger = logging.getLogger("archiver.cleanup")

LOCK_NAME = "_archiver.lock"


def lock_path(location: Location) -> str:
    """Where the maintenance lock of the archive at ``location`` lives."""
    if location.local:
        return os.path.join(location.root, LOCK_NAME)
    # The canonical key (scheme, endpoint, bucket and path; no credentials or query),
    # so two spellings of one archive share one lock.
    digest = hashlib.sha1(location.key.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"archiver-{digest}.lock")


def _parse_holder(data: bytes | None) -> dict[str, Any] | None:
    try:
        holder = json.loads(data.decode("utf-8")) if data and data.strip() else None
    except ValueError:  # UnicodeDecodeError too
        return None
    return holder if isinstance(holder, dict) else None


def is_holder_record(data: bytes) -> bool:
    """Whether ``data`` is a lock file's holder record (JSON with a pid)."""
    holder = _parse_holder(data)
    return holder is not None and "pid" in holder


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
        fd = open_lock_file(self.path, ours=is_holder_record)
        deadline = time.monotonic() + self.timeout
        try:
            while not try_lock(fd):
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
            write_record(fd, json.dumps(record) + "\n")
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
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        unlock(fd)

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


def lock_unless(
    dry_run: bool, location: Location, *, timeout: float, purpose: str
) -> AbstractContextManager[Any]:
    """The maintenance lock a run takes, or none for a dry run (it changes nothing)."""
    if dry_run:
        return contextlib.nullcontext()
    return MaintenanceLock(location, timeout=timeout, purpose=purpose)
