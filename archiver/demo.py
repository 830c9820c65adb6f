"""The demo archive the notebook explores: recorded from the bundled sample events."""

from __future__ import annotations

import os
from pathlib import Path

from .archive import Archive
from .record import Recorder

SAMPLE = Path("data") / "celery-events-sample.jsonl"


def _repo_root(start: Path | None = None) -> Path | None:
    """The first of ``start`` (default: cwd), its parents, and the package's checkout
    that holds ``data/celery-events-sample.jsonl``."""
    here = (start or Path.cwd()).resolve()
    candidates = [here, *here.parents, Path(__file__).resolve().parent.parent]
    return next((c for c in candidates if (c / SAMPLE).is_file()), None)


def demo_archive(
    archive: str | os.PathLike[str] | None = None, *, events: str | os.PathLike[str] | None = None
) -> str:
    """The archive to explore in the notebook; recorded from the bundled sample if missing.

    ``archive`` defaults to ``$ARCHIVER_ARCHIVE``, else ``data/archive`` in the
    checkout (found from the current directory upwards, so notebooks/ works too).
    When it holds no tasks yet, ``events`` (default ``data/celery-events-sample.jsonl``)
    is replayed into it exactly as ``make demo`` does (snapshots every second of event
    time). Returns the archive's path or URI.
    """
    root = _repo_root()
    if archive is None:
        archive = os.environ.get("ARCHIVER_ARCHIVE")
    if archive is None:
        if root is None:
            raise FileNotFoundError(
                "cannot find data/archive: set ARCHIVER_ARCHIVE or pass the archive path"
            )
        archive = root / "data" / "archive"
    archive = os.fspath(archive)
    if "tasks" in Archive(archive).tables():
        return archive
    if events is None:
        if root is None:
            raise FileNotFoundError(f"no archive at {archive} and no {SAMPLE} to record one from")
        events = root / SAMPLE
    Recorder(archive, freq=1.0).replay_file(os.fspath(events))
    return archive
