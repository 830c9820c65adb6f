"""archiver: record snapshots of Celery's event state as Parquet; load them with pandas."""

from typing import Any

from ._version import __version__
from .api import Archive, load
from .camera import Polaroid
from .check import CheckReport
from .convert import CeleryConverter, Converter
from .errors import (
    ArchiveNotFound,
    ArchiverError,
    DamagedArchiveWarning,
    DamagedFileError,
    EmptyResultWarning,
    LockedError,
    NoArchiveError,
    NotAnArchiveError,
)
from .maintenance import CompactionReport, ExpiryReport, Retention
from .parquet_camera import ParquetCamera
from .record import RecordSummary, TapSummary, record_events, tap_events
from .signals import Signal
from .state import State
from .timer import Timer


def __getattr__(name: str) -> Any:
    """``archiver.report(archive, ...)`` without importing the report's module up front."""
    if name == "report":
        import importlib

        return importlib.import_module(f"{__name__}.report")
    raise AttributeError(f"module 'archiver' has no attribute {name!r}")


__all__ = [
    "Archive",
    "ArchiveNotFound",
    "ArchiverError",
    "CeleryConverter",
    "CheckReport",
    "CompactionReport",
    "Converter",
    "DamagedArchiveWarning",
    "DamagedFileError",
    "EmptyResultWarning",
    "ExpiryReport",
    "LockedError",
    "NoArchiveError",
    "NotAnArchiveError",
    "ParquetCamera",
    "Polaroid",
    "RecordSummary",
    "Retention",
    "Signal",
    "State",
    "TapSummary",
    "Timer",
    "__version__",
    "load",
    "record_events",
    "report",
    "tap_events",
]
