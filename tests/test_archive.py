"""The read handle, archiver.archive.Archive: tables, partitions, visible files, schemas, reads,
and what it does with damaged files (``on_bad_file``), on archives recorded from real events."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from archiver.archive import Archive
from archiver.errors import ArchiverError, DamagedArchiveWarning, DamagedFileError, NoArchiveError
from archiver.schema import SCHEMAS

from .helpers import HOUR, footer_rows, not_parquet, record_copies, shifted_hours


@pytest.fixture(scope="module")
def template(tmp_path_factory, small_events) -> Path:
    """The small recording twice, an hour apart: two partitions per table."""
    path = tmp_path_factory.mktemp("archive") / "a"
    record_copies(path, [shifted_hours(small_events, k) for k in range(2)])
    return path


@pytest.fixture
def path(template, tmp_path) -> Path:
    """A fresh copy of the template archive."""
    shutil.copytree(template, tmp_path / "a")
    return tmp_path / "a"


def collect() -> tuple[list[tuple[str, str]], object]:
    """A list and an ``on_bad_file`` handler appending ``(path, reason)`` to it."""
    found: list[tuple[str, str]] = []
    return found, lambda path, reason: found.append((path, reason))


def test_tables_are_the_visible_folders(path):
    """tables() lists the table folders, not hidden ones nor plain files."""
    (path / "_quarantine").mkdir()
    (path / ".tmp").mkdir()
    (path / "notes.txt").write_text("not a table")
    assert Archive(path).tables() == ["snapshots", "tasks", "workers"]


def test_a_missing_archive_is_named(tmp_path):
    """A path with no archive has no tables; require() and reads raise NoArchiveError naming it."""
    arch = Archive(tmp_path / "nowhere")
    assert not arch.exists() and arch.tables() == []
    with pytest.raises(NoArchiveError, match=r"no archive at .*nowhere"):
        arch.require()
    with pytest.raises(NoArchiveError, match=r"no table 'tasks'.*tables: none"):
        arch.partitions("tasks")


def test_select_tables_checks_each_name(path):
    """select_tables returns every table by default and refuses an unknown one by name."""
    arch = Archive(path)
    assert arch.select_tables(None) == ["snapshots", "tasks", "workers"]
    assert arch.select_tables("tasks") == ["tasks"]
    with pytest.raises(ArchiverError, match=r"unknown table 'task'.*snapshots, tasks, workers"):
        arch.select_tables(["tasks", "task"])


def test_partitions_are_oldest_first_with_their_hours(path, small_events):
    """Each table has the two recorded hours, oldest first, spanning the recording's times."""
    arch = Archive(path)
    parts = arch.partitions("snapshots")
    assert len(parts) == 2 and parts[1].start_us - parts[0].start_us == HOUR * 10**6
    first = small_events[0]["timestamp"] * 10**6
    assert parts[0].start_us <= first < parts[0].end_us
    assert all(Path(p.path).is_dir() and p.table == "snapshots" for p in parts)


def test_a_stray_folder_is_reported_and_skipped(path):
    """A folder that is not ``date=YYYY-MM-DD`` goes to on_bad_file; the real partitions remain."""
    (path / "tasks" / "date=2026-13-01").mkdir()
    (path / "tasks" / ".date=junk").mkdir()  # hidden: ignored silently
    found, handler = collect()
    parts = Archive(path, on_bad_file=handler).partitions("tasks")
    assert len(parts) == 2
    assert [Path(p).name for p, _ in found] == ["date=2026-13-01"]
    assert "date=YYYY-MM-DD" in found[0][1]


def test_files_are_the_visible_parquet_files(path):
    """files() lists every data file once, partition by partition, and no hidden file."""
    arch = Archive(path)
    part = arch.partitions("tasks")[0]
    folder = Path(part.path)
    (folder / ".part-x.parquet.tmp").write_bytes(b"half written")
    (folder / "_foreign.parquet").write_bytes(b"someone else's")
    on_disk = sorted(str(p) for p in (path / "tasks").rglob("part-*.parquet"))
    listed = arch.files("tasks")
    assert sorted(listed) == on_disk and len(set(listed)) == len(listed)
    assert [i.path for i in arch.partition_files(part)] == listed[: len(arch.partition_files(part))]


def test_read_returns_every_row_the_footers_count(path):
    """read() returns as many rows as the files' footers hold, with date and hour columns."""
    arch = Archive(path)
    for table in arch.tables():
        got = arch.read(table)
        assert got.num_rows == footer_rows(path, table) > 0
        assert {"date", "hour"} <= set(got.column_names)
    assert arch.read("tasks", limit=7).num_rows == 7
    assert arch.read("tasks", columns=["uuid"]).column_names == ["uuid"]


def test_schema_is_archivers_for_its_tables_and_the_files_for_others(path):
    """Archiver's tables have its schema; a foreign table has its newest file's schema."""
    arch = Archive(path)
    assert arch.schema("tasks") == SCHEMAS["tasks"]
    foreign = path / "extra" / "date=2026-11-25" / "hour=3"
    foreign.mkdir(parents=True)
    pq.write_table(
        pa.table({"captured_at": pa.array([0], pa.timestamp("us"))}), foreign / "a.parquet"
    )
    assert arch.schema("extra").names == ["captured_at"]
    empty = path / "empty" / "date=2026-11-25" / "hour=3"
    empty.mkdir(parents=True)
    with pytest.raises(NoArchiveError, match=r"table 'empty' .* has no readable files"):
        arch.schema("empty")


def test_a_file_with_the_wrong_schema_is_skipped(path):
    """A data file whose ``state`` is an integer is reported with the column named, not read."""
    arch = Archive(path)
    good = Path(arch.files("tasks")[0])
    table = pq.read_table(good)
    bad_table = table.set_column(
        table.schema.get_field_index("state"), "state", pa.array(range(table.num_rows), pa.int32())
    )
    bad = good.with_name("part-wrongschema.parquet")
    pq.write_table(bad_table, bad)
    found, handler = collect()
    rows = Archive(path, on_bad_file=handler).read("tasks").num_rows
    assert rows == footer_rows(path, "tasks") - table.num_rows
    assert found == [(str(bad), found[0][1])] and "column state is int32" in found[0][1]


def test_on_bad_file_warn_raise_or_handler(path):
    """A damaged file is skipped with a warning, raised as DamagedFileError, or handed over."""
    rows = footer_rows(path, "tasks")
    bad = not_parquet(path)
    with pytest.warns(DamagedArchiveWarning, match=re.escape(f"skipped {bad}")):
        assert Archive(path).read("tasks").num_rows == rows
    with pytest.raises(DamagedFileError, match=re.escape(f"damaged {bad}")):
        Archive(path, on_bad_file="raise").read("tasks")
    found, handler = collect()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Archive(path).read("tasks", on_bad_file=handler).num_rows == rows
    assert [p for p, _ in found] == [str(bad)]


def test_on_bad_file_must_be_warn_raise_or_callable(path):
    """Any other on_bad_file is refused by name; using(None) keeps the handle as it is."""
    with pytest.raises(ArchiverError, match="invalid on_bad_file 'ignore'"):
        Archive(path, on_bad_file="ignore")  # type: ignore[arg-type]
    arch = Archive(path)
    assert arch.using(None) is arch and arch.using("raise").on_bad_file == "raise"
    assert arch.on_bad_file == "warn"


@pytest.mark.parametrize(
    "statement",
    [
        "COPY (SELECT * FROM tasks) TO '{hour}/x.parquet'",
        "COPY tasks TO '{tmp}/out.csv'",
        "ATTACH '{tmp}/db.duckdb' AS d; CREATE TABLE d.t AS SELECT 1 AS x",
        "INSTALL httpfs",
        "SELECT * FROM read_csv('{tmp}/secret.csv')",
    ],
)
def test_sql_reads_only_the_archive(path, tmp_path, statement):
    """Archive.sql refuses every file access (COPY TO, ATTACH, read_csv): it cannot write."""
    (tmp_path / "secret.csv").write_text("a\n1\n")
    arch = Archive(path)
    before = sorted(p for p in path.rglob("*") if p.is_file())
    hour = Path(arch.files("tasks")[0]).parent
    with pytest.raises(ArchiverError, match="reads only the archive's tables"):
        arch.sql(statement.format(hour=hour, tmp=tmp_path))
    assert sorted(p for p in path.rglob("*") if p.is_file()) == before
    assert sorted(tmp_path.iterdir()) == [path, tmp_path / "secret.csv"]
    assert arch.sql("SELECT count(*) AS n FROM tasks")["n"][0].as_py() == footer_rows(path, "tasks")


@pytest.mark.parametrize("statement", ["", "   ", "-- a comment only", ";"])
def test_sql_without_a_statement_is_an_error(path, statement):
    """An empty query is one error naming it (it printed an empty table)."""
    with pytest.raises(ArchiverError, match="no SQL statement"):
        Archive(path).sql(statement)
