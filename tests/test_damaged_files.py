"""Damaged and foreign files and folders never block reads or maintenance (issue 9, items 6-8).

Every test starts from a real archive, recorded by replaying
``data/celery-events-small.jsonl`` three times an hour apart (many small files),
and adds one kind of damage next to the good files. Reads must return exactly the
good rows, warn naming the damage (or raise naming it when strict), and
maintenance must do everything else and report what it skipped.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import archiver
from archiver.errors import ArchiverError, DamagedArchiveWarning, DamagedFileError
from archiver.layout import QUARANTINE

from .helpers import (
    bit_flip,
    build_archive,
    damaged_copy_name,
    first_file,
    invoke,
    not_parquet,
    truncated,
)

ROOT = Path(__file__).resolve().parent.parent


# -- the archive ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def template(tmp_path_factory, small_events) -> Path:
    """Three closed hours of the small recording, small files (flush every 200 rows)."""
    return build_archive(tmp_path_factory.mktemp("damaged") / "a", small_events, hours=3)


@pytest.fixture(scope="module")
def reference(template) -> dict[str, pd.DataFrame]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the template itself is clean
        return {t: rows(archiver.Archive(template), t) for t in ("tasks", "workers", "snapshots")}


@pytest.fixture
def path(template, tmp_path) -> Path:
    shutil.copytree(template, tmp_path / "a")
    return tmp_path / "a"


def rows(arch: archiver.Archive, table: str = "tasks", **kwargs) -> pd.DataFrame:
    """Every row of ``table``, canonical order, plain dtypes (to compare as sets)."""
    df = arch.load(table, **kwargs)
    for column in df.columns:
        if isinstance(df[column].dtype, pd.CategoricalDtype):
            df[column] = df[column].astype(object)
    key = {"tasks": "uuid", "workers": "hostname", "snapshots": "snapshot_id"}[table]
    return df.sort_values(["captured_at", "snapshot_id", key], kind="stable").reset_index(drop=True)


def parquet_files(path: Path, table: str = "tasks") -> list[Path]:
    return sorted(p for p in (path / table).rglob("*.parquet") if p.is_file())


# -- kinds of damage: each adds one damaged file next to a good one, returns its path ---


def zero_bytes(path: Path) -> Path:
    bad = damaged_copy_name(first_file(path), "empty")
    bad.write_bytes(b"")
    return bad


def unreadable(path: Path) -> Path:
    """A folder named like a data file (chmod 000 does not stop root, which runs tests)."""
    good = first_file(path)
    bad = damaged_copy_name(good, "folder")
    bad.mkdir()
    shutil.copy(good, bad / "inside.parquet")
    return bad


def bad_compacted(path: Path) -> Path:
    """Garbage named like a compacted file: its metadata would say what it replaces."""
    good = first_file(path)
    bad = good.with_name("part-20261122T000000-compact-0123456789ab-001.parquet")
    bad.write_bytes(b"PAR1" + os.urandom(3000) + b"PAR1")
    return bad


def _rewritten(path: Path, tag: str, change: Callable[[pa.Table], pa.Table]) -> Path:
    good = first_file(path)
    bad = damaged_copy_name(good, tag)
    pq.write_table(change(pq.read_table(good)), bad)
    return bad


def int32_state(path: Path) -> Path:
    def change(t: pa.Table) -> pa.Table:
        i = t.schema.get_field_index("state")
        codes = pc.cast(t.column("state").combine_chunks().indices, pa.int32())
        return t.set_column(i, pa.field("state", pa.int32()), codes)

    return _rewritten(path, "int32-state", change)


def missing_captured_at(path: Path) -> Path:
    return _rewritten(path, "no-time", lambda t: t.drop_columns(["captured_at"]))


def string_captured_at(path: Path) -> Path:
    def change(t: pa.Table) -> pa.Table:
        i = t.schema.get_field_index("captured_at")
        text = pc.cast(t.column("captured_at"), pa.string())
        return t.set_column(i, pa.field("captured_at", pa.string()), text)

    return _rewritten(path, "text-time", change)


FILE_DAMAGE = {
    f.__name__: f
    for f in (
        truncated,
        zero_bytes,
        not_parquet,
        unreadable,
        bad_compacted,
        int32_state,
        missing_captured_at,
        string_captured_at,
        bit_flip,
    )
}


# -- damaged folders: each holds a copy of a real file, returns the folder --------------
def planted(path: Path, day: str, hour: str, name: str = "part-x.parquet") -> Path:
    """A copy of a real tasks file at ``tasks/<day>/<hour>/<name>``; returns the hour folder."""
    bad = path / "tasks" / day / hour
    bad.mkdir(parents=True, exist_ok=True)
    shutil.copy(first_file(path), bad / name)
    return bad


def real_day(path: Path) -> str:
    """The ``date=`` folder of a real partition of the tasks table."""
    return first_file(path).parent.parent.name


def ancient_date(path: Path) -> Path:
    """A day before 1970 (year 702), with the file name the sink would give it."""
    name = "part-07020615T030000-000000000000-000001.parquet"
    return planted(path, "date=702-06-15", "hour=3", name).parent


def impossible_date(path: Path) -> Path:
    """Month 13, day 45."""
    return planted(path, "date=2026-13-45", "hour=1").parent


def bad_hour(path: Path) -> Path:
    """``hour=x`` next to the real hours of a real day."""
    return planted(path, real_day(path), "hour=x")


def unicode_hour(path: Path) -> Path:
    """``hour=\u0663`` (Arabic-Indic 3): ``int()`` reads it, the hive partitioning cannot."""
    return planted(path, real_day(path), "hour=\u0663")


def unicode_date(path: Path) -> Path:
    """The sample's day in Arabic-Indic digits."""
    digits = str.maketrans(
        "0123456789", "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669"
    )
    return planted(path, "date=2026-11-25".translate(digits), "hour=3").parent


def year_2300(path: Path) -> Path:
    """A day the sink never writes: past 2261, beyond pandas' nanosecond timestamps."""
    return planted(path, "date=2300-01-01", "hour=0").parent


def file_for_folder(path: Path) -> Path:
    bad = path / "tasks" / "date=2026-11-20"
    shutil.copy(first_file(path), bad)
    return bad


FOLDER_DAMAGE = {
    f.__name__: f
    for f in (
        ancient_date,
        impossible_date,
        bad_hour,
        unicode_hour,
        unicode_date,
        year_2300,
        file_for_folder,
    )
}
ALL_DAMAGE = {**FILE_DAMAGE, **FOLDER_DAMAGE}


def assert_no_traceback(result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output


# -- Archive.load -----------------------------------------------------------------------
@pytest.mark.parametrize("damage", ALL_DAMAGE)
def test_load_skips_the_damage_with_a_warning_naming_it(path, reference, damage):
    """Load skips the damage with a warning naming it."""
    bad = ALL_DAMAGE[damage](path)
    arch = archiver.Archive(path)
    with pytest.warns(DamagedArchiveWarning, match=re.escape(f"skipped {bad}")):
        got = rows(arch)
    pd.testing.assert_frame_equal(got, reference["tasks"])
    # time-ranged reads, latest() and history() also skip it
    start = got["captured_at"].iloc[len(got) // 2]
    with warnings.catch_warnings():  # (the damage may lie outside the range: no warning)
        warnings.simplefilter("ignore", DamagedArchiveWarning)
        ranged = rows(arch, start=start)
    pd.testing.assert_frame_equal(ranged, got[got["captured_at"] >= start].reset_index(drop=True))
    with pytest.warns(DamagedArchiveWarning, match=re.escape(f"skipped {bad}")):
        latest = arch.latest("tasks")
    assert sorted(latest["uuid"]) == sorted(set(reference["tasks"]["uuid"]))


@pytest.mark.parametrize("damage", ALL_DAMAGE)
def test_load_raises_naming_the_damage_when_strict(path, damage):
    """Load raises naming the damage when strict."""
    bad = ALL_DAMAGE[damage](path)
    with pytest.raises(DamagedFileError, match=re.escape(f"damaged {bad}: ")):
        archiver.Archive(path).load("tasks", on_bad_file="raise")
    with pytest.raises(DamagedFileError, match=re.escape(f"damaged {bad}: ")):
        archiver.Archive(path, on_bad_file="raise").latest("tasks")


def test_bit_flips_are_caught_by_page_checksums(path, reference):
    """Bit flips are caught by page checksums."""
    good = first_file(path)
    bad = bit_flip(path)
    # without verification the flipped copy reads back, as different values
    flipped = pq.read_table(bad)
    assert flipped.num_rows == pq.read_metadata(good).num_rows
    assert not flipped.equals(pq.read_table(good))
    with pytest.raises(OSError, match="CRC"):
        pq.ParquetFile(bad, page_checksum_verification=True).read()
    with pytest.warns(DamagedArchiveWarning, match="CRC"):
        pd.testing.assert_frame_equal(rows(archiver.Archive(path)), reference["tasks"])


def test_a_damaged_compacted_file_replaces_nothing(path, reference):
    """A compaction interrupted before deleting its inputs, whose output is then damaged:
    the inputs it would replace are read instead."""
    before = {p: p.read_bytes() for p in parquet_files(path)}
    archiver.Archive(path).compact()
    for p, data in before.items():  # as if killed before the inputs were deleted
        p.write_bytes(data)
    compacted = [p for p in parquet_files(path) if "-compact-" in p.name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pd.testing.assert_frame_equal(rows(archiver.Archive(path)), reference["tasks"])
    target = compacted[0]
    assert pq.read_metadata(target).metadata[b"archiver.replaces"] != b"[]"
    target.write_bytes(target.read_bytes()[:100])
    with pytest.warns(DamagedArchiveWarning, match=re.escape(f"skipped {target}")):
        pd.testing.assert_frame_equal(rows(archiver.Archive(path)), reference["tasks"])


def _flip_a_page_bit(target: Path) -> None:
    """Flip one bit inside a data page of ``target``, in place: the footer still reads."""
    meta = pq.read_metadata(target)
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    col = meta.row_group(0).column(names.index("uuid"))
    data = bytearray(target.read_bytes())
    data[col.data_page_offset + col.total_compressed_size - 8] ^= 0x10
    target.write_bytes(bytes(data))


def _merged_next_to_its_inputs(path: Path) -> tuple[Path, dict[Path, bytes]]:
    """The state after a kill -9 between a compaction's rename and its deletes, with one
    bit of the merged tasks file flipped; the merged file and the inputs' bytes."""
    inputs = {p: p.read_bytes() for p in parquet_files(path)}
    archiver.Archive(path).compact()
    for p, data in inputs.items():
        p.write_bytes(data)
    merged = next(p for p in parquet_files(path) if "-compact-" in p.name)
    replaced = pq.read_metadata(merged).metadata[b"archiver.replaces"]
    inputs = {p: d for p, d in inputs.items() if p.parent == merged.parent}
    assert inputs and all(p.name.encode() in replaced for p in inputs)
    _flip_a_page_bit(merged)
    return merged, inputs


def test_a_merged_file_with_a_damaged_page_hides_none_of_its_inputs(path, reference):
    """A merged file with a damaged page hides none of its inputs."""
    merged, _ = _merged_next_to_its_inputs(path)
    with pytest.warns(DamagedArchiveWarning, match=re.escape(f"skipped {merged}: ")):
        pd.testing.assert_frame_equal(rows(archiver.Archive(path)), reference["tasks"])
    with pytest.warns(DamagedArchiveWarning, match=re.escape(f"skipped {merged}: ")):
        got = archiver.Archive(path).load("tasks", columns=["uuid"], limit=10**6)
    assert len(got) == len(reference["tasks"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DamagedArchiveWarning)
        latest = archiver.Archive(path).latest("tasks")
    assert sorted(latest["uuid"]) == sorted(set(reference["tasks"]["uuid"]))


@pytest.mark.parametrize("read_first", [False, True])
def test_recovery_never_deletes_the_inputs_of_a_damaged_merged_file(path, reference, read_first):
    """The next compaction verifies every page of a merged file before deleting its
    inputs: a damaged one is removed instead, and its inputs are compacted again."""
    merged, _ = _merged_next_to_its_inputs(path)
    if read_first:  # a reader in this process already found the damage
        with pytest.warns(DamagedArchiveWarning):
            rows(archiver.Archive(path))
    result = invoke("compact", "--archive", path)
    assert result.exit_code == 0, result.output
    assert_no_traceback(result)
    assert f"Skipped {merged}: " in result.stdout
    assert "a merged file: removed, its inputs kept" in result.stdout
    assert not merged.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pd.testing.assert_frame_equal(rows(archiver.Archive(path)), reference["tasks"])
        assert archiver.Archive(path).check().ok


def test_a_damaged_merged_file_whose_inputs_are_partly_gone_is_kept(path, reference):
    """A damaged merged file whose inputs are partly gone is kept."""
    merged, inputs = _merged_next_to_its_inputs(path)
    gone = sorted(inputs)[0]
    gone.unlink()  # killed while deleting the inputs
    content = merged.read_bytes()
    report = archiver.Archive(path).compact()
    assert str(merged) in dict(report.skipped)
    assert merged.read_bytes() == content  # the only copy of the deleted input's rows


# -- archiver info and archiver query ---------------------------------------------------
@pytest.mark.parametrize("damage", sorted(set(ALL_DAMAGE) - {"bit_flip"}))
def test_info_counts_the_good_rows_and_warns(path, reference, damage):
    """(``info`` reads footers only: a flipped bit in a page is ``check``'s to find.)"""
    bad = ALL_DAMAGE[damage](path)
    result = invoke("info", "--archive", path)
    assert result.exit_code == 0, result.output
    assert f"Warning: skipped {bad}" in result.stderr
    assert "damaged files or folders skipped" in result.stdout
    tasks = next(line for line in result.stdout.splitlines() if line.startswith("tasks "))
    assert f"{len(reference['tasks']):,}" in tasks.split()


@pytest.mark.parametrize("damage", ALL_DAMAGE)
def test_query_skips_or_fails_strictly(path, reference, damage):
    """Query skips or fails strictly."""
    bad = ALL_DAMAGE[damage](path)
    result = invoke("query", "tasks", "--archive", path, "--format", "csv", "--columns", "uuid")
    assert result.exit_code == 0, result.output
    assert f"Warning: skipped {bad}" in result.stderr
    assert len(result.stdout.splitlines()) == len(reference["tasks"]) + 1
    since = reference["tasks"]["captured_at"].iloc[-1].isoformat()
    ranged = invoke("query", "tasks", "--archive", path, "--since", since, "--format", "csv")
    assert ranged.exit_code == 0, ranged.output
    strict = invoke("query", "tasks", "--archive", path, "--strict")
    assert strict.exit_code == 1
    assert_no_traceback(strict)
    assert strict.output.startswith(f"Error: damaged {bad}: ")
    assert len(strict.output.splitlines()) == 1


# -- archiver compact and archiver expire -----------------------------------------------
def _small_files_per_partition(path: Path) -> dict[Path, int]:
    counts: dict[Path, int] = {}
    for f in parquet_files(path):
        counts[f.parent] = counts.get(f.parent, 0) + 1
    return counts


@pytest.mark.parametrize("damage", ALL_DAMAGE)
def test_compact_does_the_rest_and_reports_the_damage(path, reference, damage):
    """Compact does the rest and reports the damage."""
    bad = ALL_DAMAGE[damage](path)
    kept = bad.read_bytes() if bad.is_file() else None
    result = invoke("compact", "--archive", path)
    assert result.exit_code == 0, result.output
    assert_no_traceback(result)
    assert f"Skipped {bad}: " in result.stdout
    assert "Compacted 9 hours" in result.stdout  # every hour of 3 tables, the damaged one too
    # the damage is left exactly as it was (never lost); all good rows are still there
    assert bad.exists() and (kept is None or bad.read_bytes() == kept)
    with pytest.warns(DamagedArchiveWarning):
        pd.testing.assert_frame_equal(rows(archiver.Archive(path)), reference["tasks"])
    # a second run has nothing left to do, and still reports the damage
    again = invoke("compact", "--archive", path)
    assert again.exit_code == 0 and "Nothing to compact" in again.stdout, again.output
    assert f"Skipped {bad}: " in again.stdout
    report = archiver.Archive(path).compact()
    assert str(bad) in dict(report.skipped)


@pytest.mark.parametrize("damage", ALL_DAMAGE)
def test_expire_does_the_rest_and_can_drop_the_damaged_hour(path, reference, damage):
    """Expire does the rest and can drop the damaged hour."""
    bad = ALL_DAMAGE[damage](path)
    by_state = invoke("expire", "--archive", path, "--state", "SUCCESS=1s", "--yes")
    assert by_state.exit_code == 0, by_state.output
    assert_no_traceback(by_state)
    assert f"Skipped {bad}: " in by_state.stdout
    assert bad.exists()
    with pytest.warns(DamagedArchiveWarning):
        left = rows(archiver.Archive(path))
    success = set(reference["tasks"].loc[reference["tasks"]["state"] == "SUCCESS", "uuid"])
    last = reference["tasks"].drop_duplicates("uuid", keep="last")
    gone = set(last.loc[last["state"] == "SUCCESS", "uuid"])
    assert gone and gone <= success and not (set(left["uuid"]) & gone)
    assert set(left["uuid"]) == set(reference["tasks"]["uuid"]) - gone
    # every hour is old enough: all go, the one holding a damaged file too
    whole = invoke("expire", "--archive", path, "--older-than", "1h", "--yes")
    assert whole.exit_code == 0, whole.output
    assert_no_traceback(whole)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DamagedArchiveWarning)
        assert archiver.Archive(path).partitions("tasks") == []
    assert bad.exists() == (damage in FOLDER_DAMAGE)  # a foreign folder is left alone


# -- archiver check ---------------------------------------------------------------------
@pytest.mark.parametrize("damage", ALL_DAMAGE)
def test_check_reports_and_quarantines(path, reference, damage):
    """check reports each kind of damage on one line and --quarantine moves it aside."""
    bad = ALL_DAMAGE[damage](path)
    relative = bad.relative_to(path).as_posix()
    content = bad.read_bytes() if bad.is_file() else None
    result = invoke("check", "--archive", path)
    assert result.exit_code == 1, result.output
    assert_no_traceback(result)
    problems = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(problems) == 1 and problems[0].startswith(f"{relative}: "), result.output
    quarantined = invoke("check", "--archive", path, "--quarantine", "--json")
    assert quarantined.exit_code == 1, quarantined.output
    moved = path / QUARANTINE / relative
    assert not bad.exists() and moved.exists()
    if content is not None:
        assert moved.read_bytes() == content
    moved_to = [p["moved_to"] for p in json.loads(quarantined.stdout)["problems"]]
    assert moved_to == [f"{QUARANTINE}/{relative}"]
    # now clean: no warning, every good row, and the quarantine is not a table
    clean = invoke("check", "--archive", path)
    assert clean.exit_code == 0 and "no problems" in clean.output, clean.output
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        arch = archiver.Archive(path)
        pd.testing.assert_frame_equal(rows(arch), reference["tasks"])
        assert QUARANTINE not in arch.tables()
        info = invoke("info", "--archive", path)
        assert info.exit_code == 0 and "Warning" not in info.output


def test_check_api_reads_every_row(path):
    """Check api reads every row."""
    report = archiver.Archive(path).check()
    assert report.ok and report.tables == 3
    assert report.rows == sum(pq.read_metadata(f).num_rows for f in path.rglob("*.parquet"))


def test_quarantine_never_overwrites(path):
    """A second quarantined file of the same name gets a numbered name, the first is kept."""
    first = not_parquet(path)
    relative = first.relative_to(path)
    archiver.Archive(path).check(quarantine=True)
    second = not_parquet(path)
    second.write_text("another one")
    report = archiver.Archive(path).check(quarantine=True)
    assert [p.moved_to for p in report.problems] == [f"{QUARANTINE}/{relative.as_posix()}.1"]
    assert (path / QUARANTINE / relative).read_text().startswith("this is not")
    assert (path / f"{QUARANTINE}/{relative.as_posix()}.1").read_text() == "another one"


# -- one-line errors --------------------------------------------------------------------
def test_an_out_of_range_integer_filter_is_a_one_line_error(path):
    """An out of range integer filter is a one line error."""
    result = invoke("query", "tasks", "--archive", path, "--where", "retries>99999999999999999999")
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot compare column retries (int32)")
    assert "out of range" in result.output and len(result.output.splitlines()) == 1
    with pytest.raises(ArchiverError, match="out of range"):
        archiver.Archive(path).load("tasks", filters=[("retries", "in", [2**40])])


def _limited(max_bytes: int) -> Callable[[], None]:
    def limit() -> None:  # writes past max_bytes fail with EFBIG, like a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return limit


@pytest.mark.parametrize(
    "command",
    [["compact"], ["expire", "--state", "SUCCESS=1s", "--yes"]],
    ids=["compact", "expire"],
)
def test_a_failed_write_is_a_one_line_error_and_loses_nothing(path, reference, command):
    """A failed write is a one line error and loses nothing."""
    result = subprocess.run(
        [sys.executable, "-m", "archiver", *command, "--archive", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        preexec_fn=_limited(2000),
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {command[0]} stopped: "), lines
    assert "too large" in lines[0].lower()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pd.testing.assert_frame_equal(rows(archiver.Archive(path)), reference["tasks"])
    assert not [p for p in path.rglob(".*.tmp")]


# -- fuzzing ----------------------------------------------------------------------------
NAME = st.one_of(
    st.text(alphabet="date=hour-0123456789x_.", min_size=1, max_size=16),
    st.sampled_from(
        ["date=2026-11-22", "hour=15", "hour=16", "hour=99", "hour=x", "_x", ".y", "hour=\u0663"]
    ),
    st.builds(
        "date={}-{:02d}-{:02d}".format,
        st.integers(0, 99999),
        st.integers(0, 99),
        st.integers(0, 99),
    ),
    st.integers(-5, 30).map("hour={}".format),
)


@st.composite
def damage(draw):
    """A folder path (1-2 levels) under the tasks table and damaged bytes of a real file."""
    levels = draw(st.lists(NAME, min_size=1, max_size=2))
    kind = draw(st.sampled_from(["truncate", "flip", "random", "copy"]))
    return levels, kind, draw(st.integers(0, 2**31)), draw(st.binary(max_size=64))


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(cases=st.lists(damage(), min_size=1, max_size=3))
def test_fuzzed_folders_and_bytes_never_hide_a_good_row(template, reference, tmp_path, cases):
    """Fuzzed folders and bytes never hide a good row."""
    path = tmp_path / "fuzz"
    if path.exists():
        shutil.rmtree(path)
    shutil.copytree(template, path)
    good = first_file(path).read_bytes()
    for levels, kind, seed, junk in cases:
        folder = path / "tasks"
        for name in levels:
            folder = folder / name
        if folder.exists() and not folder.is_dir():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        data = bytearray(good)
        if kind == "truncate":
            data = data[: seed % len(data)]
        elif kind == "flip":
            data[seed % len(data)] ^= 1 << (seed % 8)
        elif kind == "random":
            data = bytearray(junk)
        (folder / f"part-fuzz-{seed}.parquet").write_bytes(bytes(data))
    arch = archiver.Archive(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DamagedArchiveWarning)
        got = rows(arch)
        # every good row is read (an intact copy may add rows: it is a good file)
        merged = reference["tasks"].merge(got.drop_duplicates(), how="left", indicator=True)
        assert (merged["_merge"] == "both").all()
        arch.latest("tasks")
        arch.check()
        report = arch.compact()
        assert report is not None
        merged = reference["tasks"].merge(rows(arch).drop_duplicates(), how="left", indicator=True)
        assert (merged["_merge"] == "both").all()
    result = invoke("check", "--archive", path, "--quarantine")
    assert_no_traceback(result)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        after = rows(archiver.Archive(path))
    merged = reference["tasks"].merge(after.drop_duplicates(), how="left", indicator=True)
    assert (merged["_merge"] == "both").all()
