"""archiver: record snapshots of Celery's event state as partitioned Parquet; load them with pandas."""

__version__ = "0.1.0"

from .archive import Archive  # noqa: E402
from .camera import Polaroid  # noqa: E402
from .convert import CeleryConverter, Converter  # noqa: E402
from .errors import ArchiverError, LockedError, NoArchiveError  # noqa: E402
from .parquet_camera import ParquetCamera  # noqa: E402
from .signals import Signal  # noqa: E402
from .state import State  # noqa: E402
from .timer import Timer  # noqa: E402


def load(path_or_uri, table: str = "tasks", **kwargs):
    """Load ``table`` of the archive at ``path_or_uri`` as a DataFrame (see ``Archive.load``)."""
    return Archive(path_or_uri).load(table, **kwargs)


__all__ = [
    "Archive",
    "ArchiverError",
    "CeleryConverter",
    "Converter",
    "LockedError",
    "NoArchiveError",
    "ParquetCamera",
    "Polaroid",
    "Signal",
    "State",
    "Timer",
    "__version__",
    "load",
]
