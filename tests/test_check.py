"""``archiver check`` and ``Archive.check``: the report, JSON, errors, the lock."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import archiver
from archiver.layout import QUARANTINE
from archiver.maintenance.lock import MaintenanceLock

from .test_cleanup import build_archive
from .test_damaged_files import bit_flip, invoke, not_parquet, truncated


@pytest.fixture(scope="module")
def template(tmp_path_factory, small_events) -> Path:
    """Three closed hours of the small recording."""
    return build_archive(tmp_path_factory.mktemp("check") / "a", small_events, hours=3)


@pytest.fixture
def path(template, tmp_path) -> Path:
    shutil.copytree(template, tmp_path / "a")
    return tmp_path / "a"


def test_a_clean_archive_passes(path):
    result = invoke("check", "--archive", path)
    assert result.exit_code == 0, result.output
    files = sorted(path.rglob("*.parquet"))
    rows = sum(pq.read_metadata(f).num_rows for f in files)
    assert result.output == f"Checked 3 tables, {len(files)} files, {rows:,} rows: no problems.\n"


def test_json_report(path):
    flipped = bit_flip(path)
    bad = truncated(path)
    result = invoke("check", "--archive", path, "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["tables"] == 3
    by_path = {p["path"]: p for p in report["problems"]}
    assert set(by_path) == {
        bad.relative_to(path).as_posix(),
        flipped.relative_to(path).as_posix(),
    }
    assert "CRC" in by_path[flipped.relative_to(path).as_posix()]["reason"]
    assert all(p["moved_to"] is None for p in report["problems"])
    assert bad.exists() and flipped.exists()  # only --quarantine moves anything


def test_missing_archive_is_a_one_line_error(tmp_path):
    result = invoke("check", "--archive", tmp_path / "nope")
    assert result.exit_code == 1
    assert result.output.startswith("Error: no archive at ") and result.output.count("\n") == 1


def test_quarantine_waits_for_a_running_cleanup(path):
    not_parquet(path)
    arch = archiver.Archive(path)
    with MaintenanceLock(arch.location, timeout=0, purpose="compact"):
        held = arch.check()  # reporting needs no lock
        assert len(held.problems) == 1
        result = invoke("check", "--archive", path, "--quarantine")
    assert result.exit_code == 1 and "locked" in result.output, result.output
    assert not (path / QUARANTINE).exists()


def test_quarantined_files_are_left_alone_by_cleanups(path):
    bad = not_parquet(path)
    archiver.Archive(path).check(quarantine=True)
    moved = path / QUARANTINE / bad.relative_to(path)
    content = moved.read_bytes()
    report = archiver.Archive(path).compact()
    assert report.skipped == () and report.partitions
    expiry = archiver.Archive(path).expire(older_than="1h", dry_run=False)
    assert expiry.skipped == () and expiry.partitions
    assert moved.read_bytes() == content
    assert archiver.Archive(path).tables() == ["snapshots", "tasks", "workers"]
