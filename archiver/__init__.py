"""archiver: record snapshots of Celery's event state as Parquet; load them with pandas."""

__version__ = "0.1.0"

from .archive import Archive
from .camera import Polaroid
from .check import CheckReport
from .cleanup import CompactionReport, ExpiryReport, Retention
from .convert import CeleryConverter, Converter
from .errors import (
    ArchiverError,
    DamagedArchiveWarning,
    DamagedFileError,
    LockedError,
    NoArchiveError,
)
from .parquet_camera import ParquetCamera
from .signals import Signal
from .state import State
from .timer import Timer


def load(path_or_uri, table: str = "tasks", **kwargs):
    """Load ``table`` of the archive at ``path_or_uri`` as a DataFrame (see ``Archive.load``)."""
    return Archive(path_or_uri).load(table, **kwargs)


def __getattr__(name: str):
    """``archiver.report(archive, ...)`` without importing the report's module up front."""
    if name == "report":
        import importlib

        return importlib.import_module(f"{__name__}.report")
    raise AttributeError(f"module 'archiver' has no attribute {name!r}")


__all__ = [
    "Archive",
    "ArchiverError",
    "CeleryConverter",
    "CheckReport",
    "CompactionReport",
    "Converter",
    "DamagedArchiveWarning",
    "DamagedFileError",
    "ExpiryReport",
    "LockedError",
    "NoArchiveError",
    "ParquetCamera",
    "Polaroid",
    "Retention",
    "Signal",
    "State",
    "Timer",
    "__version__",
    "load",
    "report",
]
