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

from .helpers import bit_flip, build_archive, invoke, not_parquet, truncated


@pytest.fixture(scope="module")
def template(tmp_path_factory, small_events) -> Path:
    """Three closed hours of the small recording."""
    return build_archive(tmp_path_factory.mktemp("check") / "a", small_events, hours=3)


@pytest.fixture
def path(template, tmp_path) -> Path:
    shutil.copytree(template, tmp_path / "a")
    return tmp_path / "a"


def test_a_clean_archive_passes(path):
    """A clean archive checks with exit 0 and a one-line count of tables, files and rows."""
    result = invoke("check", "--archive", path)
    assert result.exit_code == 0, result.output
    files = sorted(path.rglob("*.parquet"))
    rows = sum(pq.read_metadata(f).num_rows for f in files)
    assert result.output == f"Checked 3 tables, {len(files)} files, {rows:,} rows: no problems.\n"


def test_json_report(path):
    """--json reports each damaged file by path and reason, with exit code 1."""
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
    """Missing archive is a one line error."""
    result = invoke("check", "--archive", tmp_path / "nope")
    assert result.exit_code == 1
    assert result.output.startswith("Error: no archive at ") and result.output.count("\n") == 1


def test_quarantine_waits_for_a_running_cleanup(path):
    """Quarantine waits for a running cleanup."""
    not_parquet(path)
    arch = archiver.Archive(path)
    with MaintenanceLock(arch.location, timeout=0, purpose="compact"):
        held = arch.check()  # reporting needs no lock
        assert len(held.problems) == 1
        result = invoke("check", "--archive", path, "--quarantine")
    assert result.exit_code == 1 and "locked" in result.output, result.output
    assert not (path / QUARANTINE).exists()


def test_quarantined_files_are_left_alone_by_cleanups(path):
    """Quarantined files are left alone by cleanups."""
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


@pytest.mark.parametrize("where", ["_quarantine", "_quarantine/tasks", "_quarantine/tasks/date"])
def test_a_symlinked_quarantine_is_refused_never_followed(path, tmp_path, where):
    """A symlinked quarantine is refused never followed."""
    bad = not_parquet(path)
    content = bad.read_bytes()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = path / where.replace("date", bad.parent.parent.name)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(elsewhere, target_is_directory=True)
    result = invoke("check", "--archive", path, "--quarantine")
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {link} is a symbolic link: refusing to quarantine through it; remove it\n"
    )
    assert bad.read_bytes() == content and list(elsewhere.iterdir()) == []
    plain = invoke("check", "--archive", path)  # reporting moves nothing: no refusal
    assert plain.exit_code == 1 and plain.stdout.startswith(bad.relative_to(path).as_posix())


def test_a_file_where_a_table_belongs_is_reported(path):
    """A file where a table belongs is reported."""
    shutil.rmtree(path / "workers")
    (path / "workers").write_bytes(b"not a folder")
    result = invoke("check", "--archive", path, "--json")
    assert result.exit_code == 1
    problems = json.loads(result.stdout)["problems"]
    assert problems == [
        {"path": "workers", "reason": "a file where a table folder belongs", "moved_to": None}
    ]
    moved = archiver.Archive(path).check(quarantine=True)
    assert [p.moved_to for p in moved.problems] == [f"{QUARANTINE}/workers"]
    assert (path / QUARANTINE / "workers").read_bytes() == b"not a folder"
    assert archiver.Archive(path).check().ok


def test_a_dangling_parquet_symlink_is_reported(path, tmp_path):
    """A dangling parquet symlink is reported."""
    folder = sorted((path / "tasks").rglob("*.parquet"))[0].parent
    link = folder / "part-gone.parquet"
    link.symlink_to(tmp_path / "gone.parquet")
    result = invoke("check", "--archive", path)
    assert result.exit_code == 1
    assert result.stdout == f"{link.relative_to(path).as_posix()}: a symbolic link to nothing\n"
    moved = archiver.Archive(path).check(quarantine=True)
    target = path / moved.problems[0].moved_to
    assert target.is_symlink() and not link.is_symlink()
    assert archiver.Archive(path).check().ok
