"""The demo archive: recorded from the sample events once, then reused."""

from __future__ import annotations

import archiver
from archiver import demo


def test_demo_archive_is_recorded_once(tmp_path, monkeypatch, small_events):
    """Demo archive is recorded once."""
    from .helpers import SMALL

    target = tmp_path / "demo"
    monkeypatch.setenv("ARCHIVER_ARCHIVE", str(target))
    monkeypatch.chdir(tmp_path)
    path = demo.demo_archive(events=SMALL)
    assert path == str(target)
    a = archiver.Archive(path)
    assert a.load("snapshots")["event_count"].iloc[-1] == len(small_events)
    files = sorted(p.stat().st_mtime_ns for p in target.rglob("*.parquet"))
    assert demo.demo_archive(events=SMALL) == path  # already there: not recorded again
    assert sorted(p.stat().st_mtime_ns for p in target.rglob("*.parquet")) == files
    explicit = demo.demo_archive(tmp_path / "other", events=SMALL)
    assert "tasks" in archiver.Archive(explicit).tables()
