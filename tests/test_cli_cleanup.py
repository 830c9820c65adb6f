"""``archiver compact``, ``expire`` and ``cleanup``: output, errors, and the effect on disk."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

import archiver
from archiver.cli import cli, cmd_cleanup
from archiver.maintenance.lock import MaintenanceLock, lock_path

from .helpers import (
    all_frames,
    assert_same_rows,
    build_archive,
    expected_expired,
    frame,
    listing,
    visible_counts,
)


@pytest.fixture(scope="module")
def template(tmp_path_factory, sample_events) -> Path:
    """Two closed hours of the sample (15 small files per table and hour)."""
    return build_archive(tmp_path_factory.mktemp("cli") / "a", sample_events, hours=2)


@pytest.fixture
def arch(template, tmp_path) -> archiver.Archive:
    shutil.copytree(template, tmp_path / "a")
    return archiver.Archive(tmp_path / "a")


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_error(result, message: str) -> None:
    """Exit code 1 and exactly one line ``Error: <message>``, no traceback."""
    assert result.exit_code == 1, result.output
    assert result.output == f"Error: {message}\n"


def hour_start(arch: archiver.Archive, index: int) -> pd.Timestamp:
    return pd.Timestamp(arch.partitions("tasks")[index].start_us * 1000, tz="UTC")


class TestCompactCommand:
    def test_compacts_and_prints_a_table(self, arch):
        """compact merges every closed hour and prints one line per hour and a summary."""
        before = all_frames(arch)
        result = invoke("compact", "--archive", arch.uri)
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert re.split(r"\s{2,}", lines[0]) == [
            "table", "hour", "files in", "files out", "rows in", "rows out", "bytes in",
            "bytes out",
        ]  # fmt: skip
        assert len(lines) == 2 + 6 + 1
        assert lines[2].startswith("snapshots  2026-11-22 15:00  15")
        assert lines[-1].startswith("Compacted 6 hours: 90 -> 6 files, ")
        assert_same_rows(before, arch)
        assert set(visible_counts(arch).values()) == {1}
        again = invoke("compact", "--archive", arch.uri)
        assert again.output == "Nothing to compact: every closed hour is already compacted.\n"

    def test_dry_run_changes_nothing(self, arch):
        """--dry-run shows the plan and leaves the files alone."""
        files = listing(Path(arch.uri))
        result = invoke("compact", "--archive", arch.uri, "--dry-run")
        assert result.exit_code == 0, result.output
        assert result.output.splitlines()[-1].startswith(
            "Dry run: would compact 6 hours, 90 files into at most 6 ("
        )
        assert listing(Path(arch.uri)) == files

    def test_table_keep_and_before(self, arch):
        """--table, --keep latest and --before pick what is compacted and how."""
        before = frame(arch, "tasks")
        cut = hour_start(arch, 1).isoformat()
        args = [
            "compact", "--archive", arch.uri, "--table", "tasks", "--keep", "latest",
            "--before", cut, "--target-size", "64MiB",
        ]  # fmt: skip
        files = listing(Path(arch.uri))
        plan = invoke(*args)  # --keep latest deletes rows: only the plan without --yes
        assert plan.exit_code == 0, plan.output
        kept = before[before["captured_at"] < hour_start(arch, 1)]["uuid"].nunique()
        assert plan.output.splitlines()[-2:] == [  # the plan counts the rows a run keeps
            f"Dry run: would compact 1 hours, 15 files into at most 1 ({kept} rows, 806.8 KiB).",
            "Nothing was changed: pass --yes to apply.",
        ]
        assert listing(Path(arch.uri)) == files
        result = invoke(*args, "--yes")
        assert result.exit_code == 0, result.output
        assert "Compacted 1 hours: 15 -> 1 files" in result.output
        counts = visible_counts(arch)
        assert [n for (t, _, _), n in sorted(counts.items()) if t == "tasks"] == [1, 15]
        assert {n for (t, _, _), n in counts.items() if t != "tasks"} == {15}
        after = frame(arch, "tasks")
        first = before["captured_at"] < hour_start(arch, 1)
        assert len(after[after["captured_at"] < hour_start(arch, 1)]) == kept
        assert kept == before[first]["uuid"].nunique() < first.sum()

    def test_progress_bar_on_a_terminal(self, arch, monkeypatch):
        """On a terminal a progress bar is drawn."""
        monkeypatch.setattr(cmd_cleanup, "is_terminal", lambda stream=None: True)
        result = invoke("compact", "--archive", arch.uri)
        assert result.exit_code == 0, result.output
        assert "Compacting" in result.output

    def test_unknown_table(self, arch):
        """An unknown --table is a one-line error listing the tables."""
        assert_error(
            invoke("compact", "--archive", arch.uri, "--table", "nope"),
            f"unknown table 'nope' in archive {arch.uri}: tables are snapshots, tasks, workers",
        )

    def test_bad_options(self, arch, tmp_path):
        """A bad time, size or a missing archive is a one-line error."""
        assert_error(
            invoke("compact", "--archive", arch.uri, "--before", "someday"),
            "invalid time 'someday': give an ISO time (2026-11-25T10:00) "
            "or a duration ago (2h, 7d)",
        )
        assert_error(
            invoke("compact", "--archive", arch.uri, "--target-size", "big"),
            "invalid size 'big': use bytes or a unit, such as 128MiB",
        )
        missing = tmp_path / "missing"
        assert_error(invoke("compact", "--archive", missing), f"no archive at {missing}")

    def test_locked(self, arch):
        """While another cleanup holds the lock, compact fails at once with --wait 0."""
        files = listing(Path(arch.uri))
        with MaintenanceLock(arch.location, purpose="test"):
            result = invoke("compact", "--archive", arch.uri, "--wait", "0")
        assert result.exit_code == 1
        assert re.fullmatch(
            rf"Error: archive {re.escape(arch.uri)} is locked by another cleanup "
            rf"\(pid {os.getpid()} on host {re.escape(socket.gethostname())} since "
            rf"\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ; "
            rf"lock file {re.escape(lock_path(arch.location))}\); "
            r"wait for it to finish or wait longer for the lock \(--wait SECONDS\)\n",
            result.output,
        ), result.output
        assert listing(Path(arch.uri)) == files


class TestExpireCommand:
    def test_dry_run_then_yes(self, arch):
        """Without --yes expire only shows what would go; with --yes it deletes exactly that."""
        now = (hour_start(arch, 1) + pd.Timedelta("2h")).isoformat()
        files = listing(Path(arch.uri))
        dry = invoke("expire", "--archive", arch.uri, "--older-than", "90m", "--now", now)
        assert dry.exit_code == 0, dry.output
        plan, last = dry.output.splitlines()[-2:]
        assert plan.startswith("Dry run: would delete 3 hours (45 files) and 0 tasks, ")
        assert plan.endswith(" rows.")
        assert last == "Nothing was changed: pass --yes to apply."
        assert listing(Path(arch.uri)) == files
        real = invoke("expire", "--archive", arch.uri, "--older-than", "90m", "--now", now, "--yes")
        assert real.exit_code == 0, real.output
        assert real.output.splitlines()[-1].startswith("Deleted 3 hours (45 files) and 0 tasks")
        assert {len(arch.partitions(t)) for t in arch.tables()} == {1}

    def test_dry_run_means_the_same_everywhere(self, arch):
        """--dry-run (even with --yes) shows the plan of every command and changes nothing."""
        files = listing(Path(arch.uri))
        for args in (
            ["expire", "--older-than", "1h", "--dry-run", "--yes"],
            ["expire", "--older-than", "1h", "--dry-run"],
            ["compact", "--keep", "latest", "--dry-run", "--yes"],
            ["compact", "--dry-run"],
            ["cleanup", "--keep", "latest", "--dry-run"],
        ):
            result = invoke(*args, "--archive", arch.uri)
            assert result.exit_code == 0, (args, result.output)
            assert result.output.splitlines()[-1].startswith("Dry run: would "), args
            assert "--yes" not in result.output, args
        assert listing(Path(arch.uri)) == files

    def test_states(self, arch):
        """--state STATE=DURATION removes the tasks whose last row is that old."""
        before = frame(arch, "tasks")
        now = before["captured_at"].max() + pd.Timedelta("90min")
        per_state = {"SUCCESS": "2h", "FAILURE": "1h"}
        expected = expected_expired(before, per_state, now)
        args = ["--state", "success=2h", "--state", "FAILURE=1h", "--now", now.isoformat()]
        result = invoke("expire", "--archive", arch.uri, *args, "--yes")
        assert result.exit_code == 0, result.output
        table = result.output.splitlines()
        assert re.split(r"\s{2,}", table[0]) == ["state", "retention", "tasks", "rows"]
        assert table[2].startswith("FAILURE  1h")
        assert table[3].startswith("SUCCESS  2h")
        assert set(frame(arch, "tasks")["uuid"]) == set(before["uuid"]) - expected

    def test_errors(self, arch):
        """Bad durations, states and a missing retention are one-line errors."""
        bare = invoke("expire", "--archive", arch.uri, "--older-than", "30")
        assert bare.exit_code == 2, bare.output  # a usage error, as `record --duration 30`
        assert bare.output.splitlines()[-1] == (
            "Error: Invalid value for '--older-than': invalid duration '30' for --older-than: "
            "use a number and a unit, such as 30d, 12h, 90m or 1d12h"
        )
        assert_error(
            invoke("expire", "--archive", arch.uri, "--state", "SUCCESS"),
            "invalid state retention 'SUCCESS': use STATE=DURATION, such as SUCCESS=1d",
        )
        assert_error(
            invoke("expire", "--archive", arch.uri, "--state", "DONE=1d"),
            "unknown task state 'DONE': states are FAILURE, PENDING, RECEIVED, REJECTED, "
            "RETRY, REVOKED, STARTED, SUCCESS",
        )
        nothing = invoke("expire", "--archive", arch.uri)  # a usage error: exit code 2
        assert nothing.exit_code == 2, nothing.output
        assert nothing.output.splitlines()[-1] == (
            "Error: nothing to expire: give --older-than DURATION and/or --state STATE=DURATION"
        )
        assert_error(
            invoke("expire", "--archive", arch.uri, "--older-than", "1d", "--table", "x"),
            f"unknown table 'x' in archive {arch.uri}: tables are snapshots, tasks, workers",
        )


class TestCleanupCommand:
    def test_json_retention_with_yes(self, arch, tmp_path):
        """cleanup expires and compacts as the retention file says."""
        before = frame(arch, "tasks")
        now = before["captured_at"].max() + pd.Timedelta("90min")
        retention = tmp_path / "retention.json"
        retention.write_text(json.dumps({"per_state": {"SUCCESS": "2h"}, "keep": "all"}))
        expected = expected_expired(before, {"SUCCESS": "2h"}, now)
        result = invoke(
            "cleanup", "--archive", arch.uri, "--retention", retention, "--now", now, "--yes"
        )
        assert result.exit_code == 0, result.output
        assert "Deleted 0 hours (0 files) and " in result.output
        assert "\nCompacted 5 hours: " in result.output  # expiry already rewrote one
        assert set(frame(arch, "tasks")["uuid"]) == set(before["uuid"]) - expected
        assert set(visible_counts(arch).values()) == {1}

    def test_toml_retention_without_yes_changes_nothing(self, arch, tmp_path):
        """Without --yes a retention that deletes rows is only a plan. Options override the file."""
        files = listing(Path(arch.uri))
        retention = tmp_path / "retention.toml"
        retention.write_text('older_than = "1d"\nkeep = "latest"\n')
        result = invoke("cleanup", "--archive", arch.uri, "--retention", retention, "--keep", "all")
        assert result.exit_code == 0, result.output
        assert "\nDry run: would delete 6 hours (90 files) and 0 tasks, " in result.output
        assert "Dry run: would compact 6 hours, 90 files into at most 6" in result.output
        assert result.output.splitlines()[-1] == "Nothing was changed: pass --yes to apply."
        assert listing(Path(arch.uri)) == files

    def test_lossless_cleanup_applies_without_yes(self, arch):
        """A cleanup that deletes no rows (compaction only) applies directly, before --before."""
        before = all_frames(arch)
        cut = hour_start(arch, 1).isoformat()
        result = invoke("cleanup", "--archive", arch.uri, "--before", cut)
        assert result.exit_code == 0, result.output
        assert result.output.splitlines()[-1].startswith("Compacted 3 hours: 45 -> 3 files")
        assert_same_rows(before, arch)
        assert sorted(visible_counts(arch).values()) == [1, 1, 1, 15, 15, 15]

    def test_dry_run(self, arch):
        """cleanup --dry-run changes nothing."""
        files = listing(Path(arch.uri))
        result = invoke(
            "cleanup", "--archive", arch.uri, "--older-than", "1d", "--dry-run", "--yes"
        )
        assert result.exit_code == 0, result.output
        assert "Dry run: would compact 6 hours" in result.output
        assert "--yes" not in result.output  # --dry-run --yes: a dry run, no hint to pass --yes
        assert listing(Path(arch.uri)) == files

    def test_bad_retention_files(self, arch, tmp_path):
        """Unknown settings and unreadable files are one-line errors."""
        bad = tmp_path / "bad.json"
        bad.write_text('{"older": "1d"}')
        assert_error(
            invoke("cleanup", "--archive", arch.uri, "--retention", bad),
            "unknown retention setting(s) older: use older_than, per_state, compact, keep, "
            "target_file_bytes, tables",
        )
        missing = tmp_path / "missing.toml"
        assert_error(
            invoke("cleanup", "--archive", arch.uri, "--retention", missing),
            f"cannot read retention file {missing}: No such file or directory",
        )
        broken = tmp_path / "broken.toml"
        broken.write_text("older_than = \n")
        result = invoke("cleanup", "--archive", arch.uri, "--retention", broken)
        assert result.exit_code == 1
        assert result.output.startswith(f"Error: invalid TOML in {broken}: ")
        assert result.output.count("\n") == 1
