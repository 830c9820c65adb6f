"""archiver's exceptions: one base class, messages that name the fix."""


class ArchiverError(Exception):
    """Base class for errors a user can act on."""


class NoArchiveError(ArchiverError):
    """The archive or table does not exist."""


class ArchiveNotFound(NoArchiveError, FileNotFoundError):
    """Nothing is at the archive's path (also a :class:`FileNotFoundError`)."""


class NotAnArchiveError(ArchiverError):
    """The archive's path is a file, a table, an archive's parent or cannot be written."""


class LockedError(ArchiverError):
    """Another process holds the archive's maintenance lock."""


class DamagedFileError(ArchiverError):
    """A file or folder of the archive cannot be read (raised when asked to be strict)."""


class DamagedArchiveWarning(UserWarning):
    """A file or folder of the archive was skipped because it cannot be read."""


class EmptyResultWarning(UserWarning):
    """A read returned no rows; the message says why (the window, the filters)."""


def missing_extra(what: str, extra: str, packages: str) -> str:
    """The message for an optional dependency that is not installed.

    It names the packages to install, and the extra for a checkout: ``pip install
    'archiver[extra]'`` would fetch an unrelated PyPI project of the same name.
    """
    return (
        f"{what} is not installed: pip install {packages} "
        f"(or, in archiver's checkout: pip install -e '.[{extra}]')"
    )


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (pyarrow's span several)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
