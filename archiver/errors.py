"""archiver's exceptions: one base class, messages that name the fix."""


class ArchiverError(Exception):
    """Base class for errors a user can act on."""


class NoArchiveError(ArchiverError):
    """The archive or table does not exist."""


class LockedError(ArchiverError):
    """Another process holds the archive's maintenance lock."""
