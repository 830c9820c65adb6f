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
#: How long an object-store lock holds without its holder: a dead host's lock ends then.
LEASE_SECONDS = 3600.0


class ObjectLease:
    """A lock object ``<archive>/_archiver.lock`` on S3, created only if absent.

    PutObject with ``If-None-Match: *`` succeeds for one process only (AWS S3, and
    SeaweedFS, honour it); the object holds the holder and the end of its lease. A
    lock whose lease has ended is deleted with ``If-Match`` its ETag (so two takers
    cannot both delete a fresh lock) and taken; so is the lock of a dead process of this
    host (this host's local lock is held first). A server that refuses conditional
    requests (HTTP 501) disables it: the reading-side rule of :mod:`archiver.layout`
    keeps readers exact without it.
    """

    def __init__(self, location: Location, lease: float = LEASE_SECONDS) -> None:
        self.client: Any = getattr(getattr(location.fs, "handler", None), "fs", None)
        bucket, _, prefix = location.root.partition("/")
        self.bucket, self.key = bucket, f"{prefix}/{LOCK_NAME}" if prefix else LOCK_NAME
        self.lease = lease
        self.etag: str | None = None
        self.supported = location.object_store and hasattr(self.client, "call_s3")

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.client.call_s3(
            method, Bucket=self.bucket, Key=self.key, **kwargs
        )
        return result

    def try_acquire(self, record: dict[str, Any]) -> bool:
        """Create the lock object; False if another holder's lease is running."""
        body = json.dumps({**record, "expires": time.time() + self.lease}).encode()
        for _ in range(2):
            try:
                self.etag = self._call("put_object", Body=body, IfNoneMatch="*").get("ETag")
                return True
            except OSError as exc:
                if _not_supported(exc):
                    self.supported = False
                    return True
                if not _precondition_failed(exc):
                    raise
            holder, etag = self.holder()
            if holder is None or not _stale(holder):
                return False
            logger.warning("Took over the expired object-store lock of %s", describe(holder))
            with contextlib.suppress(OSError):  # another taker was first: it wins
                self._call("delete_object", IfMatch=etag)
        return False

    def holder(self) -> tuple[dict[str, Any] | None, str | None]:
        """The current lock object's holder record and ETag (None if absent)."""
        path = f"{self.bucket}/{self.key}"
        try:  # the ETag first: if the object changes after, a delete with it fails
            etag = self._call("head_object").get("ETag")
            data = self.client.cat_file(path)
        except OSError:  # FileNotFoundError too
            return None, None
        return _parse_holder(data), etag

    def release(self) -> None:
        """Delete our lock object (only if it is still ours)."""
        if self.etag is not None:
            with contextlib.suppress(OSError):
                self._call("delete_object", IfMatch=self.etag)
            self.etag = None


def _stale(holder: dict[str, Any]) -> bool:
    """Whether a lock object's holder is gone: its lease ended, or it was a process of
    this host that is no longer running (the caller holds this host's local lock)."""
    try:
        if float(holder.get("expires", 0)) <= time.time():
            return True
    except (TypeError, ValueError):
        return True
    pid = holder.get("pid")
    here = holder.get("host") == socket.gethostname()
    return here and isinstance(pid, int) and not pid_alive(pid)


def _precondition_failed(exc: BaseException) -> bool:
    text = f"{exc} {exc.__cause__!r}"
    return "PreconditionFailed" in text or "pre-condition" in text or "412" in text


def _not_supported(exc: BaseException) -> bool:
    text = f"{exc} {exc.__cause__!r}"
    return "NotImplemented" in text or "501" in text


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
        self._lease = ObjectLease(location) if location.object_store else None

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
            self._take_lease(record, deadline)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _take_lease(self, record: dict[str, Any], deadline: float) -> None:
        """On an object store, take the lock object too (other hosts share that one)."""
        lease = self._lease
        if lease is None or not lease.supported:
            return
        while not lease.try_acquire(record):
            if time.monotonic() >= deadline:
                holder, _ = lease.holder()
                raise LockedError(
                    f"archive {self.location.uri} is locked by another cleanup "
                    f"({describe(holder)}; lock object {LOCK_NAME}); wait for it to finish "
                    "or give a longer wait"
                )
            time.sleep(min(self.poll, max(0.0, deadline - time.monotonic())) or 0.001)

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
            text += "; wait for it to finish or wait longer for the lock (lock_timeout)"
        return text

    def release(self) -> None:
        """Empty the lock file (a clean release) and unlock it."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._lease is not None:
            self._lease.release()
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
