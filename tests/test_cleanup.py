"""Compaction and expiry on real archives recorded from the sample events."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import archiver
from archiver import maintenance
from archiver.errors import ArchiverError, LockedError
from archiver.layout import is_hidden
from archiver.maintenance import recovery
from archiver.maintenance.lock import MaintenanceLock, lock_path, read_holder
from archiver.schema import TASK_STATES
from archiver.sink import write_file

from .helpers import (
    HOUR,
    KEYS,
    SHIFT,
    FakeTimer,
    all_frames,
    assert_same_rows,
    build_archive,
    drive,
    expected_expired,
    frame,
    listing,
    record_small_files,
    shifted,
    visible_counts,
)

ROOT = Path(__file__).resolve().parent.parent


# -- building archives ------------------------------------------------------------
@pytest.fixture(scope="module")
def template(tmp_path_factory, sample_events) -> Path:
    """Three closed hours of the sample, 15 small files per table and hour."""
    return build_archive(tmp_path_factory.mktemp("tpl") / "a", sample_events, hours=3)


@pytest.fixture
def arch(template, tmp_path) -> archiver.Archive:
    """A fresh copy of the template archive."""
    shutil.copytree(template, tmp_path / "a")
    return archiver.Archive(tmp_path / "a")


# -- compaction ----------------------------------------------------------------------
class TestCompact:
    def test_rows_identical_and_file_count_drops(self, arch):
        """Compaction keeps every row of every table and leaves one file per hour."""
        before = all_frames(arch)
        files_before = sum(visible_counts(arch).values())
        report = arch.compact()
        assert_same_rows(before, arch)
        counts = visible_counts(arch)
        assert set(counts.values()) == {1}
        assert sum(counts.values()) < files_before
        assert report.files_in == files_before
        assert report.files_out == len(counts) == len(report.partitions)
        assert report.rows == sum(len(df) for df in before.values())
        assert report.bytes_out < report.bytes_in
        assert report.seconds > 0 and not report.dry_run

    def test_second_run_changes_nothing(self, arch):
        """Compaction is idempotent: the second run reports and changes nothing."""
        arch.compact()
        files = listing(Path(arch.uri))
        report = arch.compact()
        assert report.partitions == () and report.files_in == 0
        assert listing(Path(arch.uri)) == files

    def test_inputs_are_deleted_and_outputs_sorted(self, arch):
        """No replaced file is left on disk, and each merged file is sorted by captured_at."""
        arch.compact()
        for path, _size in listing(Path(arch.uri)).items():
            assert "-compact-" in path
        for table in arch.tables():
            for path in arch.files(table):
                times = pq.read_table(path, columns=["captured_at"]).column(0).to_pylist()
                assert times == sorted(times)

    def test_keep_latest_is_last_row_per_key_and_hour(self, arch):
        """keep="latest" leaves exactly the last row of each uuid / hostname per hour."""
        before = all_frames(arch)
        report = arch.compact(keep="latest")
        assert report.rows < sum(len(df) for df in before.values())
        for table, df in before.items():
            key = KEYS[table]
            hour = df["captured_at"].dt.floor("h")
            expected = df.assign(_h=hour).groupby(["_h", key], sort=False).tail(1)
            expected = expected.drop(columns="_h")
            expected = expected.sort_values(["captured_at", "snapshot_id", key], kind="stable")
            pd.testing.assert_frame_equal(
                frame(arch, table), expected.reset_index(drop=True), obj=table
            )
        files = listing(Path(arch.uri))
        assert arch.compact(keep="latest").partitions == ()
        assert arch.compact().partitions == ()
        assert listing(Path(arch.uri)) == files

    def test_open_hours_are_left_alone(self, arch):
        """Only hours that ended by ``before`` are compacted; later ones keep their files."""
        parts = arch.partitions("tasks")
        cut = pd.Timestamp(parts[1].start_us * 1000, tz="UTC")  # end of the first hour
        untouched = {p.path: {i.base_name for i in arch.partition_files(p)} for p in parts[1:]}
        report = arch.compact(before=cut)
        assert {(p.date, p.hour) for p in report.partitions} == {(parts[0].date, parts[0].hour)}
        for p in parts[1:]:
            assert {i.base_name for i in arch.partition_files(p)} == untouched[p.path]

    def test_hours_after_now_are_open(self, tmp_path, sample_events):
        """By default the current hour (and any later one) is not compacted."""
        path = tmp_path / "a"
        record_small_files(
            path, shifted(sample_events, time.time() - sample_events[0]["timestamp"])
        )
        arch = archiver.Archive(path)
        before = listing(path)
        assert arch.compact().partitions == ()
        assert listing(path) == before

    def test_target_size_splits_and_near_target_files_stay(self, arch):
        """A small target gives several files per hour, each but the last at least the target."""
        before = all_frames(arch)
        target = 128 * 1024
        report = arch.compact(tables=["tasks"], target_file_bytes=target)
        assert_same_rows(before, arch)
        assert report.files_out > len(report.partitions)
        for p in arch.partitions("tasks"):
            sizes = [i.size for i in arch.partition_files(p)]
            assert len(sizes) > 1
            assert sum(s >= target for s in sizes) >= len(sizes) - 1
        files = listing(Path(arch.uri))
        assert arch.compact(tables=["tasks"], target_file_bytes=target).partitions == ()
        assert listing(Path(arch.uri)) == files

    def test_bigger_target_merges_earlier_output(self, arch):
        """Compacting again with a larger target merges a split hour into one file."""
        before = all_frames(arch)
        arch.compact(tables="tasks", target_file_bytes="128KiB")
        arch.compact(tables="tasks")
        assert_same_rows(before, arch)
        assert {len(arch.partition_files(p)) for p in arch.partitions("tasks")} == {1}
        assert all("-compact-" in p for p in listing(Path(arch.uri)) if p.startswith("tasks"))

    def test_dry_run_changes_nothing(self, arch):
        """A dry run reports the plan and leaves the files as they were."""
        files = listing(Path(arch.uri))
        report = arch.compact(dry_run=True)
        assert report.dry_run and report.partitions
        assert report.files_in == sum(visible_counts(arch).values())
        assert report.rows == sum(len(df) for df in all_frames(arch).values())
        assert listing(Path(arch.uri)) == files

    def test_late_file_in_a_partition_being_compacted_is_kept(self, arch, monkeypatch):
        """A file a recorder writes into a partition after it was listed is not deleted."""
        before = all_frames(arch)
        part = arch.partitions("tasks")[0]
        written: list[str] = []

        def hook(step: str) -> None:
            if step == "written" and not written:
                table = arch.read("tasks", partitions=[part]).slice(0, 5)
                table = table.drop_columns([c for c in ("date", "hour") if c in table.schema.names])
                table = table.set_column(
                    table.schema.get_field_index("snapshot_id"),
                    "snapshot_id",
                    pa.array(["late"] * 5),
                )
                write_file(arch.location, part.path, "part-late-000001.parquet", table)
                written.append("part-late-000001.parquet")

        monkeypatch.setattr(recovery, "_STEP_HOOK", hook)
        arch.compact(tables=["tasks"])
        assert written
        names = {i.base_name for i in arch.partition_files(part)}
        assert "part-late-000001.parquet" in names
        after = frame(arch, "tasks")
        assert len(after) == len(before["tasks"]) + 5
        assert (after["snapshot_id"] == "late").sum() == 5
        monkeypatch.setattr(recovery, "_STEP_HOOK", None)
        arch.compact(tables=["tasks"])  # the next run merges the late file
        assert len(frame(arch, "tasks")) == len(before["tasks"]) + 5
        assert len(arch.partition_files(part)) == 1

    def test_recorder_writing_during_compaction(self, arch, sample_events):
        """A camera writing late files into hours being compacted loses and doubles nothing."""
        before = all_frames(arch)
        events = shifted(sample_events, SHIFT + HOUR / 2, "live")  # into the first closed hour
        done = threading.Event()
        written: list[int] = []

        def recorder() -> None:
            clock = [events[0]["timestamp"]]
            state = archiver.State()
            camera = archiver.ParquetCamera(
                state, arch.uri, timer=FakeTimer(), clock=lambda: clock[0], flush_rows=50
            )
            drive(state, camera, events, clock=clock)
            camera.cancel()
            written.append(camera.sink.stats.rows_written)
            done.set()

        thread = threading.Thread(target=recorder)
        thread.start()
        runs = 0
        while not done.is_set() or runs == 0:
            arch.compact(lock_timeout=30)
            runs += 1
        thread.join()
        arch.compact()
        after = all_frames(arch)
        assert sum(map(len, after.values())) == sum(map(len, before.values())) + written[0]
        for table, df in after.items():
            assert not df.duplicated(["captured_at", "snapshot_id", KEYS[table]]).any()
            old = df[df["snapshot_id"].isin(set(before[table]["snapshot_id"]))]
            pd.testing.assert_frame_equal(old.reset_index(drop=True), before[table])
        assert {len(arch.partition_files(p)) for p in arch.partitions("tasks")} == {1}

    def test_foreign_files_untouched_and_stale_temps_removed(self, arch):
        """_SUCCESS, .crc and stray .tmp files stay; archiver's own old temporaries go."""
        part = arch.partitions("tasks")[0]
        directory = Path(part.path)
        foreign = {
            "_SUCCESS": b"",
            ".part-x.parquet.crc": b"crc",
            "stray.tmp": b"x",
            ".other.tmp": b"x",
            "notes.txt": b"hello",
        }
        for name, data in foreign.items():
            (directory / name).write_bytes(data)
        old = directory / ".part-20261122T000000-abc-000001.parquet.tmp"
        fresh = directory / ".part-20261122T000000-abc-000002.parquet.tmp"
        old.write_bytes(b"partial")
        fresh.write_bytes(b"partial")
        hours_ago = time.time() - 2 * HOUR
        os.utime(old, (hours_ago, hours_ago))
        before = all_frames(arch)
        report = arch.compact()
        assert_same_rows(before, arch)
        for name, data in foreign.items():
            assert (directory / name).read_bytes() == data
        assert not old.exists() and fresh.exists()
        assert report.temps_removed == 1

    def test_half_renamed_group_is_invisible_and_finished(self, arch, monkeypatch):
        """A compaction that dies between two renames of a group shows only the old files."""
        before = all_frames(arch)
        steps: list[str] = []

        def hook(step: str) -> None:
            steps.append(step)
            if step == "renamed":
                raise KeyboardInterrupt  # dies after renaming the first file of the group

        monkeypatch.setattr(recovery, "_STEP_HOOK", hook)
        with pytest.raises(KeyboardInterrupt):
            arch.compact(tables=["tasks"], target_file_bytes="128KiB")
        monkeypatch.setattr(recovery, "_STEP_HOOK", None)
        assert steps.count("written") >= 2  # a group of several files
        on_disk = [p for p in listing(Path(arch.uri)) if "-compact-" in p]
        assert len(on_disk) == 1 and "/." not in on_disk[0]  # the others' temporaries are gone
        assert_same_rows(before, arch)
        report = arch.compact(tables=["tasks"], target_file_bytes="128KiB")
        assert report.recovered == 1
        assert_same_rows(before, arch)
        assert not [
            p for p in listing(Path(arch.uri)) if p.startswith("tasks/") and "-compact-" not in p
        ]

    def test_committed_group_with_inputs_left_is_finished(self, arch, monkeypatch):
        """A compaction that dies after its commit, before deleting inputs, shows each row once."""
        before = all_frames(arch)

        def hook(step: str) -> None:
            if step == "deleted":
                raise KeyboardInterrupt

        monkeypatch.setattr(recovery, "_STEP_HOOK", hook)
        with pytest.raises(KeyboardInterrupt):
            arch.compact()
        monkeypatch.setattr(recovery, "_STEP_HOOK", None)
        assert_same_rows(before, arch)
        report = arch.compact()  # finishes the first group, then merges the hours not done yet
        assert report.recovered > 0 and arch.compact().partitions == ()
        assert_same_rows(before, arch)
        assert all("-compact-" in p for p in listing(Path(arch.uri)))

    def test_new_column_in_input_is_kept(self, arch):
        """A file with a column this version does not know keeps it through compaction."""
        part = arch.partitions("workers")[0]
        table = arch.read("workers", partitions=[part]).slice(0, 3)
        table = table.drop_columns([c for c in ("date", "hour") if c in table.schema.names])
        table = table.append_column("future", pa.array(["a", "b", "c"]))
        write_file(arch.location, part.path, "part-20261122T000000-future-000001.parquet", table)
        arch.compact(tables=["workers"])
        (merged,) = arch.partition_files(part)
        column = pq.read_table(merged.path, columns=["future"]).column(0)
        assert sorted(column.drop_null().to_pylist()) == ["a", "b", "c"]

    def test_unknown_table_and_missing_archive(self, arch, tmp_path):
        """Unknown tables and missing archives are ArchiverErrors naming the fix."""
        message = r"^unknown table 'nope' in archive .*: tables are snapshots, tasks, workers$"
        with pytest.raises(ArchiverError, match=message):
            arch.compact(tables=["nope"])
        with pytest.raises(ArchiverError, match="no archive at"):
            maintenance.compact(tmp_path / "missing")
        with pytest.raises(ArchiverError, match="invalid keep 'some'"):
            arch.compact(keep="some")


# -- expiry -------------------------------------------------------------------------


class TestExpire:
    def test_dry_run_then_real_run_by_age(self, arch):
        """A dry run lists the old hours and deletes nothing; the real run deletes exactly those."""
        parts = {t: arch.partitions(t) for t in arch.tables()}
        now = pd.Timestamp(parts["tasks"][-1].start_us * 1000, tz="UTC") + pd.Timedelta("2h")
        files = listing(Path(arch.uri))
        dry = arch.expire(older_than="2h", now=now)
        assert dry.dry_run and listing(Path(arch.uri)) == files
        assert {(p.table, p.date, p.hour) for p in dry.partitions} == {
            (t, p.date, p.hour) for t, ps in parts.items() for p in ps[:2]
        }
        assert dry.rows == sum(len(arch.read(t, partitions=ps[:2])) for t, ps in parts.items())
        real = arch.expire(older_than="2h", now=now, dry_run=False)
        assert not real.dry_run
        assert real.partitions == dry.partitions
        assert {(t, p.date, p.hour) for t in arch.tables() for p in arch.partitions(t)} == {
            (t, ps[2].date, ps[2].hour) for t, ps in parts.items()
        }
        gone = {f"{p.table}/date={p.date}/hour={p.hour}/" for p in dry.partitions}
        left = listing(Path(arch.uri))
        assert not [f for f in left if any(f.startswith(g) for g in gone)]
        assert set(left) == {f for f in files if not any(f.startswith(g) for g in gone)}
        assert arch.expire(older_than="2h", now=now, dry_run=False).partitions == ()

    def test_per_state_removes_expected_tasks(self, arch):
        """Tasks go, with all their rows, when their last row is older than their state's limit."""
        before = frame(arch, "tasks")
        now = before["captured_at"].max() + pd.Timedelta("90m")
        per_state = {"SUCCESS": "2h", "FAILURE": "1h", "REVOKED": "3d"}
        expected = expected_expired(before, per_state, now)
        assert 0 < len(expected) < before["uuid"].nunique()
        dry = arch.expire(per_state=per_state, now=now)
        assert set(dry.uuids) == expected
        assert {s.state for s in dry.states} == {"SUCCESS", "FAILURE"}
        assert sum(s.rows for s in dry.states) == before["uuid"].isin(expected).sum()
        assert len(frame(arch, "tasks")) == len(before)
        real = arch.expire(per_state=per_state, now=now, dry_run=False)
        assert set(real.uuids) == expected and real.rewritten > 0
        after = frame(arch, "tasks")
        remaining = before[~before["uuid"].isin(expected)].reset_index(drop=True)
        pd.testing.assert_frame_equal(after, remaining)
        assert arch.expire(per_state=per_state, now=now, dry_run=False).uuids == ()
        assert not [p for p in listing(Path(arch.uri)) if "/." in p]

    def test_task_is_judged_by_its_last_row(self, tmp_path, sample_events):
        """A task with old rows but a recent last row stays, even in its old hours."""
        path = build_archive(tmp_path / "a", sample_events, hours=3, same_uuids=True)
        arch = archiver.Archive(path)
        before = frame(arch, "tasks")
        now = before["captured_at"].max() + pd.Timedelta("30m")
        per_state = {s: "1h" for s in ("SUCCESS", "FAILURE", "REVOKED")}
        expected = expected_expired(before, per_state, now)
        old_rows = before[before["captured_at"] < now - pd.Timedelta("1h")]
        survivors = set(old_rows["uuid"]) - expected
        assert survivors  # these have rows older than 1h in an expiring state
        report = arch.expire(per_state=per_state, now=now, dry_run=False)
        assert set(report.uuids) == expected
        after = frame(arch, "tasks")
        assert survivors <= set(after["uuid"])
        kept = before[before["uuid"].isin(survivors)]
        assert len(after[after["uuid"].isin(survivors)]) == len(kept)

    def test_everything_expires_in_a_partition(self, arch):
        """When every row of an hour expires the hour is left empty, with no tombstone behind."""
        before = frame(arch, "tasks")
        now = before["captured_at"].max() + pd.Timedelta("30D")
        report = arch.expire(per_state={s: "1d" for s in TASK_STATES}, now=now, dry_run=False)
        assert set(report.uuids) == set(before["uuid"])
        assert len(frame(arch, "tasks")) == 0
        assert not [p for p in listing(Path(arch.uri)) if p.startswith("tasks/")]

    def test_errors(self, arch):
        """Bad durations and unknown states are ArchiverErrors with a one-line hint."""
        message = (
            r"^invalid duration '30' for older_than: use a number and a unit, "
            r"such as 30d, 12h, 90m or 1d12h$"
        )
        with pytest.raises(ArchiverError, match=message):
            arch.expire(older_than="30")
        with pytest.raises(ArchiverError, match=r"^invalid duration 'soon' for state SUCCESS"):
            arch.expire(per_state={"SUCCESS": "soon"})
        message = r"unknown task state 'SUCESS' \(did you mean SUCCESS\?\): states are "
        with pytest.raises(ArchiverError, match=message):
            arch.expire(per_state=["SUCESS=1d"])
        with pytest.raises(ArchiverError, match="use STATE=DURATION"):
            arch.expire(per_state=["SUCCESS"])

    def test_nothing_to_do(self, arch):
        """Without a retention, expire reports nothing."""
        report = arch.expire(dry_run=False)
        assert report.partitions == () and report.uuids == () and report.rows == 0


# -- parsing and retention -------------------------------------------------------------
class TestParsing:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [("30d", "30D"), ("12h", "12h"), ("90m", "90min"), ("1d12h", "36h"), ("2w", "14D"),
         ("45s", "45s"), ("P1D", "1D"), ("1 day", "1D")],
    )  # fmt: skip
    def test_durations(self, text, expected):
        """Durations accept pandas-style units, compound forms and ISO 8601."""
        assert maintenance.parse_duration(text) == pd.Timedelta(expected)

    @pytest.mark.parametrize("text", ["30", "-1d", "0s", "abc", "1x", ""])
    def test_bad_durations(self, text):
        """A number without unit, a negative or zero duration, or junk is refused."""
        with pytest.raises(ArchiverError, match="invalid duration"):
            maintenance.parse_duration(text)

    @pytest.mark.parametrize(
        ("text", "expected"),
        [("128MiB", 128 * 2**20), ("64MB", 64 * 2**20), ("512k", 512 * 1024), ("1000", 1000),
         (4096, 4096), ("1GiB", 2**30)],
    )  # fmt: skip
    def test_sizes(self, text, expected):
        """Sizes are bytes or binary units."""
        assert maintenance.parse_size(text) == expected

    @pytest.mark.parametrize(
        "value", [["SUCCESS=1s", "success=2d"], {"success": "1d", "SUCCESS": "7d"}]
    )
    def test_a_state_given_twice_with_two_durations_is_refused(self, value):
        """``--state SUCCESS=1s --state success=2d`` is refused, not settled by the last one."""
        with pytest.raises(
            ArchiverError, match=r"state SUCCESS is given twice \((1s|1d), (2d|7d)\)"
        ):
            maintenance.Retention(per_state=value)
        assert maintenance.Retention(per_state=["SUCCESS=1d", "success=1d"]).per_state == {
            "SUCCESS": pd.Timedelta("1D")
        }

    def test_retention_files(self, tmp_path):
        """A retention file may be JSON or TOML; unknown settings are refused."""
        (tmp_path / "r.json").write_text(
            json.dumps({"older_than": "30d", "per_state": {"success": "1d"}, "keep": "latest"})
        )
        r = maintenance.Retention.from_file(tmp_path / "r.json")
        assert r.older_than == pd.Timedelta("30D") and r.keep == "latest"
        assert r.per_state == {"SUCCESS": pd.Timedelta("1D")}
        (tmp_path / "r.toml").write_text(
            'older_than = "7d"\ntarget_file_bytes = "64MiB"\n[per_state]\nFAILURE = "2d"\n'
        )
        r = maintenance.Retention.from_file(tmp_path / "r.toml")
        assert r.target_file_bytes == 64 * 2**20 and r.per_state == {"FAILURE": pd.Timedelta("2D")}
        (tmp_path / "bad.json").write_text('{"older": "1d"}')
        with pytest.raises(ArchiverError, match=r"unknown retention setting\(s\) older: use"):
            maintenance.Retention.from_file(tmp_path / "bad.json")


class TestRunRetention:
    def test_camera_on_cleanup_applies_retention(self, arch, caplog, monkeypatch):
        """ParquetCamera(retention=...).on_cleanup expires, compacts and logs the report."""
        df = frame(arch, "tasks")
        now = df["captured_at"].max() + pd.Timedelta("90m")
        retention = maintenance.Retention(per_state={"SUCCESS": "2h"})
        expected = expected_expired(df, {"SUCCESS": "2h"}, now)
        camera = archiver.ParquetCamera(
            archiver.State(), arch.uri, timer=FakeTimer(), retention=retention
        )
        caplog.set_level(logging.INFO, logger="archiver.camera")
        real_now = maintenance._now
        monkeypatch.setattr(maintenance, "_now", lambda v=None: now if v is None else real_now(v))
        camera.on_cleanup()
        assert "Cleanup of" in caplog.text and "compacted" in caplog.text
        assert set(frame(arch, "tasks")["uuid"]) == set(df["uuid"]) - expected
        assert {len(arch.partition_files(p)) for p in arch.partitions("tasks")} == {1}

    def test_run_retention_from_mapping_and_dry_run(self, arch):
        """run_retention takes a mapping; dry_run changes nothing."""
        files = listing(Path(arch.uri))
        report = maintenance.run_retention(arch, {"older_than": "1d"}, dry_run=True)
        assert report.expiry.dry_run and report.compaction.dry_run
        assert listing(Path(arch.uri)) == files
        report = maintenance.run_retention(arch, {"older_than": "30d", "keep": "latest"})
        assert report.expiry.partitions == () and report.compaction.partitions
        assert "compacted" in str(report)


# -- the lock ---------------------------------------------------------------------------
HOLDER = textwrap.dedent(
    """
    import sys, time
    from archiver.maintenance.lock import MaintenanceLock
    from archiver.storage import resolve
    lock = MaintenanceLock(resolve(sys.argv[1]))
    lock.acquire()
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    lock.release()
    """
)


def hold_lock(path: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


class TestLock:
    def test_second_cleanup_gets_a_clear_error(self, arch):
        """While another process cleans up, compact raises LockedError naming its pid and host."""
        proc = hold_lock(Path(arch.uri), 30)
        try:
            with pytest.raises(LockedError) as exc:
                arch.compact(lock_timeout=0.2)
            message = str(exc.value)
            assert message.startswith(f"archive {arch.uri} is locked by another cleanup (pid ")
            assert f"pid {proc.pid} on host {socket.gethostname()} since " in message
            assert message.endswith(
                "wait for it to finish or wait longer for the lock (lock_timeout)"
            )
            assert arch.expire(older_than="1d").dry_run  # a dry run needs no lock
        finally:
            proc.kill()
            proc.wait()

    def test_second_cleanup_waits(self, arch):
        """With a timeout, the second cleanup waits for the first and then runs."""
        proc = hold_lock(Path(arch.uri), 0.5)
        try:
            report = arch.compact(lock_timeout=30)
            assert report.partitions
            assert proc.wait(5) == 0
        finally:
            proc.kill()

    def test_lock_of_killed_holder_is_taken_over(self, arch, caplog):
        """A cleanup killed with -9 leaves a stale lock that the next one takes over."""
        proc = hold_lock(Path(arch.uri), 30)
        proc.kill()
        proc.wait()
        assert read_holder(lock_path(arch.location))["pid"] == proc.pid
        caplog.set_level(logging.WARNING, logger="archiver.cleanup")
        assert arch.compact(lock_timeout=0).partitions
        assert f"stale maintenance lock of {arch.uri} (pid {proc.pid} on host" in caplog.text
        assert read_holder(lock_path(arch.location)) is None  # released cleanly

    def test_stale_lock_file_of_dead_pid(self, arch, caplog):
        """A lock file naming a dead pid is taken over; while held it names this process."""
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        path = lock_path(arch.location)
        Path(path).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
        caplog.set_level(logging.WARNING, logger="archiver.cleanup")
        with MaintenanceLock(arch.location) as lock:
            assert read_holder(lock.path)["pid"] == os.getpid()
            with pytest.raises(LockedError):
                MaintenanceLock(arch.location).acquire()  # a second open file conflicts too
        assert f"(pid {dead.pid} on host" in caplog.text
        assert read_holder(path) is None

    def test_lock_file_is_hidden_from_readers(self, arch):
        """The lock file lives in the archive root under a name readers skip."""
        with MaintenanceLock(arch.location) as lock:
            assert is_hidden(os.path.basename(lock.path))
            assert arch.tables() == ["snapshots", "tasks", "workers"]


# -- a reader in another process -------------------------------------------------------
READER = textwrap.dedent(
    """
    import os, sys, time
    import pandas as pd
    import archiver
    arch = archiver.Archive(sys.argv[1])
    stop = sys.argv[2]
    first = True
    while first or not os.path.exists(stop):
        t0 = time.time()
        df = arch.load("tasks")
        digest = int(pd.util.hash_pandas_object(
            df[["captured_at", "snapshot_id", "uuid"]], index=False).sum())
        workers = len(arch.load("workers"))
        print(len(df), workers, digest, t0, time.time(), flush=True)
        first = False
    """
)


def test_concurrent_reader_sees_exact_rows(tmp_path, sample_events):
    """A process loading in a loop while another compacts always gets exactly the rows."""
    path = build_archive(tmp_path / "a", sample_events, hours=6)
    arch = archiver.Archive(path)
    tasks = arch.load("tasks")
    digest = int(
        pd.util.hash_pandas_object(tasks[["captured_at", "snapshot_id", "uuid"]], index=False).sum()
    )
    expected = f"{len(tasks)} {len(arch.load('workers'))} {digest}"
    stop = tmp_path / "stop"
    proc = subprocess.Popen(
        [sys.executable, "-c", READER, str(path), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout.readline().rsplit(" ", 2)[0] == expected
        compacted = []
        start = time.time()
        for tables, target in [
            ("tasks", "128KiB"),
            (["workers", "snapshots"], "128MiB"),
            ("tasks", "1MiB"),
        ]:
            compacted.append(arch.compact(tables=tables, target_file_bytes=target).files_in)
        end = time.time()
        stop.touch()
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    loads = [line.rsplit(" ", 2) for line in out.splitlines()]
    assert {text for text, _, _ in loads} == {expected}
    during = [1 for _, t0, t1 in loads if float(t1) > start and float(t0) < end]
    assert len(during) >= 3, "the reader did not overlap the compaction enough"
    assert all(compacted)


class _Kill(BaseException):
    """Stands in for kill -9 at a chosen step."""


def test_compact_after_expiry_killed_leaves_tombstone(tmp_path, monkeypatch):
    """A compaction right after an expiry killed past its deletes finishes the job, no traceback."""
    import pyarrow as pa

    from archiver.convert import CeleryConverter
    from archiver.sink import ParquetSink

    schemas = CeleryConverter.schemas
    sink = ParquetSink(tmp_path / "a", schemas)
    t0 = 1_700_000_000.0  # a long-closed hour

    def row(uuid, state, t):
        return pa.Table.from_pylist(
            [{"captured_at": int(t * 1e6), "snapshot_id": "s", "uuid": uuid, "state": state}],
            schema=schemas["tasks"],
        )

    sink.append("tasks", row("old-success", "SUCCESS", t0))
    sink.flush()
    sink.append("tasks", row("still-running", "STARTED", t0 + 1))
    sink.flush()

    def hook(step):
        if step == "deleted":
            raise _Kill

    monkeypatch.setattr(recovery, "_STEP_HOOK", hook)
    with pytest.raises(_Kill):
        archiver.Archive(tmp_path / "a").expire(per_state={"SUCCESS": "1d"}, dry_run=False)
    monkeypatch.setattr(recovery, "_STEP_HOOK", None)
    archive = archiver.Archive(tmp_path / "a")
    assert archive.load("tasks").uuid.tolist() == ["still-running"]
    archive.compact()
    assert archive.load("tasks").uuid.tolist() == ["still-running"]
    assert len(archive.files("tasks")) == 1
