"""What other engines see: glob readers during and after cleanups, exact access, racing cleanups."""

from __future__ import annotations

import csv
import io
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest
from click.testing import CliRunner

import archiver
from archiver.cli import cli
from archiver.layout import JOURNAL
from archiver.maintenance import recovery
from archiver.maintenance.compaction import compact_locked

from .helpers import CTX, KEYS, FakeTimer, build_archive, copy_archive, fingerprints, run_child

TABLES = ("tasks", "workers", "snapshots")


@pytest.fixture(scope="module")
def template(tmp_path_factory, sample_events) -> Path:
    """Two closed hours of the sample, 15 small files per table and hour."""
    return build_archive(tmp_path_factory.mktemp("glob") / "a", sample_events, hours=2)


@pytest.fixture
def path(template, tmp_path) -> Path:
    """A fresh copy of the template archive."""
    shutil.copytree(template, tmp_path / "a")
    return tmp_path / "a"


def glob_counts(path: Path) -> dict[str, tuple[int, int]]:
    """(rows, distinct rows) of each table as DuckDB sees it through a glob of the folders."""
    out = {}
    with duckdb.connect() as con:
        for table, key in KEYS.items():
            glob = f"{path}/{table}/*/*/*.parquet"
            out[table] = con.execute(
                f"SELECT count(*), count(DISTINCT ({key}, snapshot_id)) FROM read_parquet('{glob}')"
            ).fetchone()
    return out


def load_counts(path: Path) -> dict[str, tuple[int, int]]:
    """(rows, rows) of each table as ``Archive.load`` reads it."""
    arch = archiver.Archive(path)
    return {t: (len(arch.load(t)),) * 2 for t in TABLES}


def interrupt_at(step_name: str, nth: int = 1):
    """A step hook raising KeyboardInterrupt at the ``nth`` step called ``step_name``."""
    seen = [0]

    def hook(name: str) -> None:
        if name == step_name:
            seen[0] += 1
            if seen[0] == nth:
                raise KeyboardInterrupt

    return hook


# -- glob readers ------------------------------------------------------------------
def partitions_seen_twice(path: Path) -> list[str]:
    """The partitions (table/date/hour) in which a glob of the folders sees a row twice."""
    out = []
    with duckdb.connect() as con:
        for table, key in KEYS.items():
            glob = f"{path}/{table}/*/*/*.parquet"
            rows = con.execute(
                f"SELECT date, hour FROM read_parquet('{glob}', hive_partitioning = true) "
                f"GROUP BY date, hour HAVING count(*) > count(DISTINCT ({key}, snapshot_id))"
            ).fetchall()
            out += [f"{table}/{day}/{hour}" for day, hour in rows]
    return out


def test_glob_reader_sees_each_row_once_between_groups_without_grace(path, monkeypatch):
    """With grace 0, when a group starts every earlier group's inputs are gone: each row once."""
    expected = load_counts(path)
    seen = []

    def hook(name: str) -> None:
        if name == "written":  # a group is being written: the previous one is done
            seen.append(glob_counts(path))

    monkeypatch.setattr(recovery, "_STEP_HOOK", hook)
    archiver.Archive(path).compact(target_file_bytes="128KiB", grace=0)
    monkeypatch.setattr(recovery, "_STEP_HOOK", None)
    assert len(seen) >= 6 and all(counts == expected for counts in seen)
    assert glob_counts(path) == expected


def test_glob_reader_sees_at_most_one_group_twice_with_grace(path, monkeypatch):
    """With a grace, a glob sees at most one group's rows twice at any step, and the
    previous group's inputs are gone before the next group's first rename."""
    expected = load_counts(path)
    twice: list[tuple[str, list[str]]] = []

    def hook(name: str) -> None:
        twice.append((name, partitions_seen_twice(path)))

    monkeypatch.setattr(recovery, "_STEP_HOOK", hook)
    archiver.Archive(path).compact(target_file_bytes="128KiB", grace=0.05)
    monkeypatch.setattr(recovery, "_STEP_HOOK", None)
    assert len(twice) >= 12 and all(len(parts) <= 1 for _, parts in twice), twice
    # Kept for glob readers: while the next group is written, the last one is still twice.
    assert any(name == "written" and parts for name, parts in twice)
    assert glob_counts(path) == expected
    assert not list((path / JOURNAL).iterdir())


@pytest.mark.parametrize(("grace", "readable"), [(0.05, True), (0, False)])
def test_listed_inputs_stay_readable_until_the_next_commit(path, monkeypatch, grace, readable):
    """Files a glob listed right after a commit can still be read while the next group is
    written (with a grace), and are gone by then without one."""
    listed: list[list[Path]] = []
    opened: list[bool] = []

    def hook(name: str) -> None:
        if name == "renamed":
            listed.append(sorted(path.glob("*/*/*/*.parquet")))
        elif name == "written" and listed:
            opened.append(all(p.exists() for p in listed[-1]))
            ds.dataset([str(p) for p in listed[-1] if p.exists()], format="parquet").count_rows()

    monkeypatch.setattr(recovery, "_STEP_HOOK", hook)
    archiver.Archive(path).compact(target_file_bytes="128KiB", grace=grace)
    monkeypatch.setattr(recovery, "_STEP_HOOK", None)
    assert len(opened) >= 4 and all(o == readable for o in opened), opened


@pytest.mark.parametrize("value", ["-1s", "2x", float("nan"), "2h"])
def test_bad_grace_is_one_line(path, value):
    """A grace that is not 0 to an hour is refused with one line naming it."""
    with pytest.raises(archiver.ArchiverError, match="grace"):
        archiver.Archive(path).compact(grace=value)


def test_cli_grace(path):
    """``--grace`` takes a duration or 0; a bad one is an ``Error:`` line, exit code 2."""
    runner = CliRunner()
    ok = runner.invoke(cli, ["compact", "--archive", str(path), "--grace", "0"])
    assert ok.exit_code == 0, ok.output
    assert glob_counts(path) == load_counts(path)
    bad = runner.invoke(cli, ["cleanup", "--archive", str(path), "--grace", "soon"])
    assert bad.exit_code == 2, bad.output
    assert bad.output.splitlines()[-1] == (
        "Error: Invalid value for '--grace': invalid duration 'soon' for grace: "
        "use a number and a unit, such as 30d, 12h, 90m or 1d12h"
    )


@pytest.mark.parametrize("kill_at", [2, 3, 4, 6])
def test_killed_expiry_rewrite_shows_at_most_one_group_twice(path, kill_at):
    """An expiry killed mid-rewrite leaves glob readers at most one partition seen twice,
    archiver's readers exact; ``expire`` alone then finishes the journaled commit."""
    per_state = {"SUCCESS": "1h"}
    done = path.parent / "done"
    shutil.copytree(path, done)
    archiver.Archive(done).expire(per_state=per_state, dry_run=False, grace=0)
    expected = fingerprints(done)
    assert not list((done / JOURNAL).iterdir())  # every rewrite closed its entry
    kwargs = {"per_state": per_state, "dry_run": False, "grace": 0.05}
    code, _ = run_child(path, "expire", kwargs, kill_at=kill_at)
    assert code == -9
    assert len(partitions_seen_twice(path)) <= 1
    archiver.Archive(path).expire(per_state={"FAILURE": "1000d"}, dry_run=False)  # repairs
    assert not list((path / JOURNAL).iterdir())
    assert partitions_seen_twice(path) == []
    archiver.Archive(path).expire(per_state=per_state, dry_run=False)
    got = fingerprints(path)
    assert all((got[t] == expected[t]).all() for t in KEYS)
    assert glob_counts(path) == load_counts(path)


@pytest.mark.parametrize("step_name", ["renamed", "deleted"])
def test_recorder_start_repairs_a_half_done_commit(path, monkeypatch, step_name):
    """A commit interrupted before its inputs are gone is finished by the next recorder start."""
    expected = load_counts(path)
    monkeypatch.setattr(recovery, "_STEP_HOOK", interrupt_at(step_name))
    with pytest.raises(KeyboardInterrupt):
        archiver.Archive(path).compact()
    monkeypatch.setattr(recovery, "_STEP_HOOK", None)
    assert load_counts(path) == expected
    assert glob_counts(path) != expected  # the committed group and its inputs, both globbed
    assert list((path / JOURNAL).iterdir())
    camera = archiver.ParquetCamera(archiver.State(), path, timer=FakeTimer())
    camera.cancel()
    assert glob_counts(path) == expected == load_counts(path)
    assert not list((path / JOURNAL).iterdir())


def test_repair_is_one_listing_when_nothing_is_pending(path):
    """With no journal entry, repair deletes nothing and leaves every file as it is."""
    before = sorted(p for p in path.rglob("*"))
    assert recovery.repair(archiver.Archive(path).location) == 0
    assert sorted(p for p in path.rglob("*")) == before


def test_repair_reports_a_foreign_journal_entry(path):
    """A journal entry that names no partition is reported and left alone, never a traceback."""
    (path / JOURNAL).mkdir()
    (path / JOURNAL / "junk").write_bytes(b"../../etc\x00")
    found = []
    location = archiver.Archive(path).location
    assert recovery.repair(location, lambda p, why: found.append((p, why))) == 0
    assert found and "not a commit journal entry" in found[0][1]
    assert (path / JOURNAL / "junk").exists()


def test_pandas_reads_the_raw_folder_with_typed_partitions(path):
    """The README's one line gives pandas ``date`` as dates and ``hour`` as an integer."""
    df = pd.read_parquet(
        path / "tasks",
        partitioning=ds.partitioning(
            pa.schema([("date", pa.date32()), ("hour", pa.int32())]), flavor="hive"
        ),
    )
    assert df["hour"].dtype == "int32"
    assert len(df[df["hour"] >= 10]) + len(df[df["hour"] < 10]) == len(df)
    assert len(df) == len(archiver.Archive(path).load("tasks"))


# -- exact access --------------------------------------------------------------------
def exact_counts(path: Path) -> dict[str, tuple[int, int]]:
    """(rows, distinct rows) of each table through ``archiver sql``'s views."""
    arch = archiver.Archive(path)
    out = {}
    for table, key in KEYS.items():
        result = arch.sql(f"SELECT count(*), count(DISTINCT ({key}, snapshot_id)) FROM {table}")
        out[table] = tuple(result.to_pylist()[0].values())
    return out


def test_files_and_views_read_exactly_what_load_reads(path, monkeypatch):
    """After a commit left half-done, files() and the DuckDB views skip the replaced inputs."""
    monkeypatch.setattr(recovery, "_STEP_HOOK", interrupt_at("deleted"))
    with pytest.raises(KeyboardInterrupt):
        archiver.Archive(path).compact()
    monkeypatch.setattr(recovery, "_STEP_HOOK", None)
    arch = archiver.Archive(path)
    for table in TABLES:
        files = arch.files(table)
        assert all(Path(f).is_file() for f in files)
        with duckdb.connect() as con:
            rows = con.execute(f"SELECT count(*) FROM read_parquet({files!r})").fetchone()[0]
        assert rows == len(arch.load(table))
    assert exact_counts(path) == load_counts(path)


def test_duckdb_views_have_typed_hive_columns(path):
    """Each view has ``date`` as DATE and ``hour`` as INTEGER, and the rows of ``load``."""
    arch = archiver.Archive(path)
    con = arch.duckdb()
    types = con.execute("SELECT DISTINCT typeof(date), typeof(hour) FROM tasks").fetchall()
    assert types == [("DATE", "INTEGER")]
    df = con.execute("SELECT * FROM tasks ORDER BY captured_at, snapshot_id, uuid").df()
    ref = arch.load("tasks").sort_values(["captured_at", "snapshot_id", "uuid"])
    assert list(df["uuid"]) == list(ref["uuid"].astype(str))
    assert set(df["hour"]) == {p.hour for p in arch.partitions("tasks")}
    mine = duckdb.connect()
    assert arch.duckdb(mine) is mine and mine.execute("SELECT count(*) FROM workers").fetchone()


def test_duckdb_missing_is_one_line_naming_the_extra(path):
    """Without DuckDB, Archive.duckdb() and `archiver sql` name the extra to install."""
    code = (
        "import sys; sys.modules['duckdb'] = None\n"
        "from click.testing import CliRunner\n"
        "from archiver.cli import cli\n"
        f"r = CliRunner().invoke(cli, ['sql', 'SELECT 1', '--archive', {str(path)!r}])\n"
        "print(r.exit_code, r.output)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith(
        "1 Error: DuckDB is not installed: pip install duckdb "
        "(or, in archiver's checkout: pip install -e '.[report]')\n"
    )


def test_cli_files_and_sql(path):
    """`archiver files` prints files() one per line; `archiver sql` prints the query's result."""
    runner = CliRunner()
    result = runner.invoke(cli, ["files", "tasks", "--archive", str(path)])
    assert result.exit_code == 0
    assert result.output.splitlines() == archiver.Archive(path).files("tasks")
    result = runner.invoke(
        cli, ["sql", "SELECT count(*) AS n FROM tasks", "--archive", str(path), "--format", "csv"]
    )
    assert result.exit_code == 0
    rows = list(csv.reader(io.StringIO(result.output)))
    assert rows == [["n"], [str(len(archiver.Archive(path).load("tasks")))]]
    bad = runner.invoke(cli, ["sql", "SELECT nope FROM tasks", "--archive", str(path)])
    assert bad.exit_code == 1 and bad.output.startswith("Error: SQL failed: ")
    assert "Traceback" not in bad.output
    missing = runner.invoke(cli, ["files", "nope", "--archive", str(path)])
    assert missing.exit_code == 1 and missing.output.startswith("Error: no table 'nope'")


def test_cli_files_refuses_a_name_that_would_break_its_lines(path):
    """A data file named with a newline: `archiver files` names it, never prints half a path."""
    real = Path(archiver.Archive(path).files("tasks")[0])
    shutil.copy(real, real.with_name("part-20261125T155741-aaaaaaaaaaaa-000009-001\nx.parquet"))
    result = CliRunner().invoke(cli, ["files", "tasks", "--archive", str(path)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: cannot list ") and result.output.count("\n") == 1
    assert "000009-001\\nx.parquet: its name holds a line break" in result.output


def test_sql_equals_load_while_cleanups_are_killed(path):
    """Queries through the exact views match load() while compactions run and are killed."""
    expected = load_counts(path)
    fingerprint = fingerprints(path)
    rng = random.Random(20261130)
    stop = threading.Event()
    polls: list[dict[str, tuple[int, int]]] = []
    errors: list[BaseException] = []

    def poll() -> None:
        while not stop.is_set():
            try:
                polls.append(exact_counts(path))
            except BaseException as exc:  # reported below
                errors.append(exc)
                return

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        for _ in range(6):
            code, _ = run_child(
                path, "compact", {"target_file_bytes": "128KiB"}, delay=rng.uniform(0, 0.6)
            )
            assert code in (0, -9)
        run_child(path, "compact", {"target_file_bytes": "128KiB"})
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert polls and all(p == expected for p in polls)
    got = fingerprints(path)
    assert all((got[t] == fingerprint[t]).all() for t in KEYS)
    assert exact_counts(path) == expected == glob_counts(path)


# -- two cleanups without a common lock --------------------------------------------
@pytest.fixture(params=["local", "s3"])
def racing_archive(request, path, template) -> str:
    """The archive two cleanups race on: a local folder, or a prefix on the S3 server
    (a credentialed URI, so that a child process needs no environment)."""
    if request.param == "local":
        return str(path)
    server, prefix = request.getfixturevalue("s3")
    uri = (
        f"s3://{server.key}:{server.secret}@{server.bucket}/{prefix}"
        f"?endpoint_override={server.host_port}&scheme=http"
    )
    return copy_archive(template, uri, server)


def _compact_unlocked(uri: str, tables: list[str]) -> None:
    """One cleanup without any lock (neither the local file nor the object lease)."""
    compact_locked(
        archiver.Archive(uri), tables, before_us=2**62, target_bytes=128 * 1024, keep="all",
        dry_run=False, progress=None, grace=0.05,
    )  # fmt: skip


def _compact_paused(uri: str, tables: list[str], pause_step: str, nth: int, paused, resume) -> None:
    """Child: :func:`_compact_unlocked`, pausing at the ``nth`` step ``pause_step``."""
    hook = interrupt_at(pause_step, nth)

    def step(name: str) -> None:
        try:
            hook(name)
        except KeyboardInterrupt:
            paused.set()
            assert resume.wait(120)

    recovery._STEP_HOOK = step
    _compact_unlocked(uri, tables)


def stored_files(arch: archiver.Archive, table: str) -> set[str]:
    """The data files under ``table`` (partition/name), as the storage lists them."""
    selector = pafs.FileSelector(arch.location.join(table), recursive=True)
    infos = arch.location.fs.get_file_info(selector)
    names = [i.path for i in infos if i.type == pafs.FileType.File]
    return {n.split("/" + table + "/", 1)[1] for n in names if n.endswith(".parquet")}


@pytest.mark.parametrize(("pause_step", "nth"), [("written", 1), ("renamed", 1), ("deleted", 1)])
def test_two_cleanups_without_a_common_lock(racing_archive, pause_step, nth):
    """A cleanup process paused mid-commit while another does all the work: readers see each
    row once, and a later cleanup removes the losing copy."""
    uri = racing_archive
    arch = archiver.Archive(uri)
    expected = fingerprints(uri)
    paused, resume = CTX.Event(), CTX.Event()
    a = CTX.Process(target=_compact_paused, args=(uri, ["tasks"], pause_step, nth, paused, resume))
    a.start()
    try:
        assert paused.wait(120), "the first cleanup did not reach its pause"
        assert_exact_rows(uri, expected)
        _compact_unlocked(uri, list(TABLES))  # the second cleanup, in this process
        assert_exact_rows(uri, expected)
        resume.set()
        a.join(120)
        assert a.exitcode == 0
    finally:
        resume.set()
        if a.is_alive():
            a.kill()
            a.join()
    assert_exact_rows(uri, expected)
    _compact_unlocked(uri, list(TABLES))  # a later cleanup
    assert_exact_rows(uri, expected)
    for table in TABLES:  # the losing copy is gone: the storage holds what readers read
        exact = {f.split("/" + table + "/", 1)[1] for f in arch.files(table)}
        assert stored_files(arch, table) == exact, table
    if not uri.startswith("s3://"):
        assert glob_counts(Path(uri)) == load_counts(Path(uri))


def assert_exact_rows(uri: str, expected) -> None:
    got = fingerprints(uri)
    for table, rows in expected.items():
        assert len(got[table]) == len(rows) and (got[table] == rows).all(), table


def test_recorder_start_finishes_a_killed_expiry(path, monkeypatch):
    """Rows a killed expiry left on disk are gone for glob readers once a recorder starts."""
    monkeypatch.setattr(recovery, "_STEP_HOOK", interrupt_at("deleted"))
    with pytest.raises(KeyboardInterrupt):
        archiver.Archive(path).expire(per_state={"SUCCESS": "1h"}, dry_run=False)
    monkeypatch.setattr(recovery, "_STEP_HOOK", None)
    expected = load_counts(path)
    assert expected["tasks"] < glob_counts(path)["tasks"]  # the expired rows, globbed
    camera = archiver.ParquetCamera(archiver.State(), path, timer=FakeTimer())
    camera.cancel()
    assert glob_counts(path) == expected == load_counts(path)


def test_repair_leaves_another_hosts_young_commit(path, monkeypatch):
    """A journaled commit of another host, younger than an hour, may still be running: kept."""
    monkeypatch.setattr(recovery, "_STEP_HOOK", interrupt_at("renamed"))
    with pytest.raises(KeyboardInterrupt):
        archiver.Archive(path).compact()
    monkeypatch.setattr(recovery, "_STEP_HOOK", None)
    (entry,) = (path / JOURNAL).iterdir()
    partition = entry.read_text().splitlines()[0]
    entry.write_text(f"{partition}\nanother-host")
    before = sorted(p.name for p in (path / partition).iterdir())
    assert recovery.repair(archiver.Archive(path).location) == 0
    assert sorted(p.name for p in (path / partition).iterdir()) == before
    assert entry.exists()
