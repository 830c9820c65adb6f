"""``archiver query`` and ``archiver info``."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import archiver
from archiver import query
from archiver.cli import cli
from archiver.cli.output import (
    MIN_COLUMN,
    clip,
    display_width,
    escape,
    fit_widths,
    natural_widths,
    table_lines,
)
from archiver.query import parse_where

from .helpers import footer_rows, record_copies, shifted_hours

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def archive(tmp_path_factory, sample_events) -> Path:
    path = tmp_path_factory.mktemp("cli") / "archive"
    record_copies(path, [shifted_hours(sample_events, k) for k in range(2)])
    return path


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def error_of(*args: str) -> str:
    """The single ``Error:`` line of a failing command (exit code 1, no traceback)."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def csv_of(*args: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(run(*args, "--format", "csv").output))


# -- where ---------------------------------------------------------------------------------
def test_parse_where():
    """--where parses to filters: =, != and lists, comparisons, values kept as text."""
    assert parse_where(("name=tasks.add",)) == [("name", "==", "tasks.add")]
    assert parse_where(("state=FAILURE,RETRY",)) == [("state", "in", ["FAILURE", "RETRY"])]
    assert parse_where(("state != SUCCESS, FAILURE",)) == [
        ("state", "not in", ["SUCCESS", "FAILURE"])
    ]
    assert parse_where(("runtime>1.5", "retries<=2", "retries>=1", "clock<9")) == [
        ("runtime", ">", "1.5"),
        ("retries", "<=", "2"),
        ("retries", ">=", "1"),
        ("clock", "<", "9"),
    ]
    assert parse_where(("exception=null", "result!=NULL")) == [
        ("exception", "==", None),
        ("result", "!=", None),
    ]
    assert parse_where(("started>=2026-11-25T15:57:50",)) == [
        ("started", ">=", "2026-11-25T15:57:50")
    ]
    assert parse_where(("kwargs=a=b",)) == [("kwargs", "==", "a=b")]


# -- query ---------------------------------------------------------------------------------
def test_query_table_format(archive):
    """The table output: header, UTC times to the ms, tracebacks cut to one line."""
    out = run("query", "tasks", "--archive", archive, "--limit", "3").output.splitlines()
    assert out[0].split()[:3] == ["captured_at", "uuid", "name"]
    assert set(out[1]) <= {"-", " "}
    assert len(out) == 6 and out[-1] == "3 rows"
    assert out[2].startswith("2026-11-25 15:57:42.068")  # times in UTC, to the millisecond
    # tracebacks stay on one line, cut short
    lines = run(
        "query", "tasks", "--archive", archive, "--columns", "uuid,traceback",
        "--where", "state=FAILURE",
    ).output.splitlines()  # fmt: skip
    assert len(lines) == 2 + 2 * 280 + 1
    assert all(len(line) < 120 for line in lines)
    assert "…" in lines[2]


def test_query_where_matches_the_library(archive):
    """Query where matches the library."""
    a = archiver.Archive(archive)
    full = a.load("tasks", columns=["uuid", "name", "state", "retries", "runtime", "exception"])
    state = full["state"].astype(object)
    cases = {
        ("name=harness.add",): full["name"] == "harness.add",
        ("name!=harness.add",): full["name"] != "harness.add",
        ("state=FAILURE,RETRY",): state.isin(["FAILURE", "RETRY"]),
        ("state!=FAILURE,RETRY",): ~state.isin(["FAILURE", "RETRY"]),
        ("runtime>0.1",): full["runtime"] > 0.1,
        ("runtime<0.001",): full["runtime"] < 0.001,
        ("retries>=1",): full["retries"].fillna(0) >= 1,
        ("retries<=0",): full["retries"] <= 0,
        ("exception!=null",): full["exception"].notna(),
        ("name=harness.flaky", "state=RETRY"): (full["name"] == "harness.flaky")
        & (state == "RETRY"),
    }
    for where, mask in cases.items():
        args = [a for w in where for a in ("--where", w)]
        got = csv_of("query", "tasks", "--archive", archive, "--columns", "uuid", *args)
        want = full.loc[mask.fillna(False).astype(bool), "uuid"]
        assert got["uuid"].tolist() == want.tolist(), where
        assert len(got) > 0, where


def test_query_time_range_columns_limit(archive):
    """Query time range columns limit."""
    got = csv_of(
        "query", "tasks", "--archive", archive,
        "--since", "2026-11-25T15:57:50", "--until", "2026-11-25T16:00",
        "--columns", "captured_at,uuid,state",
    )  # fmt: skip
    assert list(got.columns) == ["captured_at", "uuid", "state"]
    times = pd.to_datetime(got["captured_at"], utc=True)
    assert times.min() >= pd.Timestamp("2026-11-25 15:57:50", tz="UTC")
    assert times.max() < pd.Timestamp("2026-11-25 16:00", tz="UTC")
    want = archiver.Archive(archive).load(
        "tasks", start="2026-11-25T15:57:50", end="2026-11-25T16:00"
    )
    assert len(got) == len(want)
    assert len(csv_of("query", "tasks", "--archive", archive, "--limit", "4")) == 4
    # --since as a duration ago: the recording is from 2026, so 100000 days covers it
    assert len(csv_of("query", "snapshots", "--archive", archive, "--since", "100000d")) == (
        footer_rows(archive, "snapshots")
    )


def test_query_latest(archive):
    """--latest gives one row per task, as of --until, filtered by --where."""
    got = csv_of("query", "tasks", "--archive", archive, "--latest", "--columns", "uuid,state")
    assert len(got) == 2 * 2110 and got["uuid"].is_unique
    as_of = csv_of(
        "query", "tasks", "--archive", archive, "--latest", "--until", "2026-11-25T16:00",
        "--where", "state=FAILURE",
    )  # fmt: skip
    assert len(as_of) == 280
    workers = csv_of("query", "workers", "--archive", archive, "--latest")
    assert sorted(workers["hostname"]) == ["w1@vm", "w2@vm"]
    recent = csv_of(
        "query", "tasks", "--archive", archive, "--latest", "--since", "2026-11-25T16:00"
    )
    assert len(recent) == 2110


def test_query_formats_and_output(archive, tmp_path):
    """JSON, CSV and Parquet output hold the same rows as load(), times in UTC."""
    a = archiver.Archive(archive)
    want = a.load("workers")
    # json: a list of records, times in ISO 8601 UTC
    records = json.loads(run("query", "workers", "--archive", archive, "--format", "json").output)
    assert len(records) == len(want)
    assert records[0]["hostname"] in ("w1@vm", "w2@vm")
    assert records[0]["captured_at"].endswith("Z")
    assert pd.Timestamp(records[0]["captured_at"]) == want["captured_at"].iloc[0]
    assert records[0]["loadavg"] == list(want["loadavg"].iloc[0])
    # csv to a file
    out = tmp_path / "w.csv"
    result = run("query", "workers", "--archive", archive, "--format", "csv", "--output", out)
    assert f"Wrote {len(want)} rows" in result.output
    assert len(pd.read_csv(out)) == len(want)
    # parquet keeps the types
    pq_out = tmp_path / "t.parquet"
    run(
        "query", "tasks", "--archive", archive, "--format", "parquet", "--output", pq_out,
        "--where", "state=FAILURE",
    )  # fmt: skip
    table = pq.read_table(pq_out)
    assert table.num_rows == 2 * 280
    assert table.schema.field("captured_at").type == pa.timestamp("us", tz="UTC")
    assert pa.types.is_dictionary(table.schema.field("state").type)
    # table to a file
    txt = tmp_path / "t.txt"
    run("query", "snapshots", "--archive", archive, "--output", txt, "--limit", "2")
    assert txt.read_text().splitlines()[4:] == ["2 rows"]
    # empty results
    assert run("query", "tasks", "--archive", archive, "--since", "2030-01-01").stdout.startswith(
        "captured_at"
    )
    assert (
        json.loads(
            run(
                "query", "tasks", "--archive", archive, "--since", "2030-01-01", "--format", "json"
            ).stdout
        )
        == []
    )


def test_query_errors_are_one_line(archive, tmp_path):
    """Query errors are one line."""
    missing = tmp_path / "missing"
    assert "no archive at" in error_of("query", "tasks", "--archive", missing)
    assert "no table 'taskz'" in error_of("query", "taskz", "--archive", archive)
    assert "unknown column(s) 'nope'" in error_of(
        "query", "tasks", "--archive", archive, "--columns", "uuid,nope"
    )
    assert "unknown column(s) 'nope'" in error_of(
        "query", "tasks", "--archive", archive, "--where", "nope=1"
    )
    assert "invalid time 'last tuesday'" in error_of(
        "query", "tasks", "--archive", archive, "--since", "last tuesday"
    )
    assert "invalid time" in error_of(
        "query", "tasks", "--archive", archive, "--until", "soon", "--latest"
    )
    assert "cannot read condition 'state~x'" in error_of(
        "query", "tasks", "--archive", archive, "--where", "state~x"
    )
    assert "cannot compare column runtime" in error_of(
        "query", "tasks", "--archive", archive, "--where", "runtime>fast"
    )
    assert "no table 'nope'" in error_of("query", "nope", "--archive", archive, "--latest")
    bad = tmp_path / "damaged"
    shutil.copytree(archive, bad)
    damaged = next((bad / "tasks").rglob("*.parquet"))
    damaged.write_bytes(b"garbage" * 10)
    assert f"damaged {damaged}: " in error_of("query", "tasks", "--archive", bad, "--strict")


def test_errors_from_the_real_program(tmp_path):
    """The installed entry point: one line on stderr, exit code 1, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "archiver", "query", "tasks", "--archive", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [f"Error: no archive at {tmp_path / 'x'}"]


# -- info ----------------------------------------------------------------------------------
def test_info(archive):
    """info lists each table's partitions, files, rows, size, time range and schema."""
    out = run("info", "--archive", archive).output.splitlines()
    assert out[0].startswith(f"archive: {archive} (current schema version 1")
    header = out[1].split()
    assert header == [
        "table", "partitions", "files", "rows", "bytes", "size", "first", "last", "schema"
    ]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in out[3:6]}
    assert set(rows) == {"snapshots", "tasks", "workers"}
    for table, cells in rows.items():
        files = list((archive / table).rglob("*.parquet"))
        assert cells[1] == "2"  # partitions (hours 15 and 16)
        assert cells[2] == str(len(files))
        assert cells[3] == f"{footer_rows(archive, table):,}"
        assert cells[4] == f"{sum(f.stat().st_size for f in files):,}"
        assert cells[-1] == "v1"
        assert cells[7] == "2026-11-25"  # first: date, time
    assert out[6].startswith("total: ")


def test_info_errors_and_empty(tmp_path):
    """info on a missing archive is an error; on an empty folder, 'no tables yet'."""
    assert "no archive at" in error_of("info", "--archive", tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    result = run("info", "--archive", tmp_path / "empty")
    assert "no tables yet" in result.output


# -- empty answers, ambiguous dates (issue 12) -----------------------------------------------
def notes_of(*args: str) -> tuple[list[str], str]:
    """The ``Note:`` lines on stderr and stdout of a command that must exit 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "archiver", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr.splitlines(), proc.stdout


def test_an_empty_answer_says_why(archive):
    """The window outside the archive, start after end, an absent value: one Note each."""
    a = ["query", "tasks", "--archive", archive]
    notes, out = notes_of(*a, "--since", "2026-12-01T10:00", "--until", "2026-12-02")
    assert notes == [
        "Note: the archive spans 2026-11-25 15:57:42\u20132026-11-25 16:58:03 "
        "and the window is 2026-12-01 10:00:00\u20132026-12-02 00:00:00"
    ]
    assert out.splitlines()[-1] == "0 rows"
    notes, _ = notes_of(*a, "--since", "2026-11-25T16:00", "--until", "2026-11-25T15:00")
    assert notes == ["Note: start (2026-11-25 16:00:00) is after end (2026-11-25 15:00:00)"]
    notes, _ = notes_of(*a, "--where", "state=FAILED", "--format", "csv")
    assert notes == [
        "Note: no value 'FAILED' in column state "
        "(values: FAILURE, PENDING, RECEIVED, RETRY, REVOKED, STARTED, SUCCESS)"
    ]
    notes, _ = notes_of(*a, "--latest", "--where", "name=tasks.add,tasks.mul", "-o", "-")
    assert notes[0].startswith("Note: no value 'tasks.add' in column name (values: harness.add")


def test_state_matches_in_any_case(archive):
    """state=failure finds the FAILURE rows, as expire --state does."""
    upper = csv_of("query", "tasks", "--archive", archive, "--where", "state=FAILURE")
    lower = csv_of("query", "tasks", "--archive", archive, "--where", "state=failure")
    assert len(upper) > 0 and lower.equals(upper)


def test_library_warns_with_the_same_text(archive):
    """load() and latest() warn with EmptyResultWarning; a non-empty answer does not."""
    a = archiver.Archive(archive)
    with pytest.warns(
        archiver.EmptyResultWarning, match=r"^start \(2026-11-25 16:00:00\) is after"
    ):
        assert a.load("tasks", start="2026-11-25T16:00", end="2026-11-25T15:00").empty
    with pytest.warns(archiver.EmptyResultWarning, match=r"^no value 'nope' in column worker"):
        assert a.latest("tasks", filters=["worker=nope"]).empty
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(a.load("tasks", filters=["state=failure"], columns=["state"])) > 0


@pytest.mark.parametrize(
    ("text", "example"),
    [("01/12/2026", "2026-12-01"), ("12.1.2026", "2026-01-12"), ("2026/12/01", "2026-12-01"),
     ("01-12-2026 10:00", "2026-12-01")],
)  # fmt: skip
def test_ambiguous_dates_are_refused(archive, text, example):
    """A numeric date other than ISO's is refused with a one-line error and exit code 1."""
    date = text.split()[0]
    assert error_of("query", "tasks", "--archive", archive, "--since", text) == (
        f"Error: ambiguous date '{date}': use ISO 8601, e.g. {example}"
    )


# -- terminal output -------------------------------------------------------------------------
def test_default_columns_row_count_and_all(archive):
    """Each table has a short default column set on screen; --columns all shows every column."""
    out = run("query", "workers", "--archive", archive, "--limit", "2").stdout.splitlines()
    assert out[0].split() == [
        "hostname", "captured_at", "alive", "active", "processed", "freq", "last_heartbeat",
        "loadavg",
    ]  # fmt: skip
    assert out[-1] == "2 rows" and len(out) == 5
    wide = run("query", "tasks", "--archive", archive, "--limit", "1", "--columns", "all")
    assert wide.stdout.splitlines()[0].split() == archiver.Archive(archive).schema("tasks").names
    assert run("query", "tasks", "--archive", archive, "--limit", "1").stdout.endswith("\n1 row\n")


def test_tail_is_the_newest_rows_newest_first(archive):
    """--tail N gives the last N rows by captured_at, newest first, for load and latest."""
    a = archiver.Archive(archive)
    full = a.load("tasks", columns=["uuid", "captured_at"])
    got = csv_of("query", "tasks", "--archive", archive, "--tail", "7", "--columns", "uuid")
    want = full.iloc[::-1].sort_values("captured_at", ascending=False, kind="stable").head(7)
    assert got["uuid"].tolist() == want["uuid"].tolist()
    latest = a.latest("tasks", columns=["uuid"])
    got = csv_of(
        "query", "tasks", "--archive", archive, "--latest", "--tail", "3", "--columns", "uuid"
    )
    assert got["uuid"].tolist() == latest["uuid"].tolist()[::-1][:3]


def test_control_characters_escaped_and_wide_characters_aligned(tmp_path):
    """A task's args with ESC, newline and CJK text: escaped, and the columns line up."""
    events = [
        {"type": "task-received", "uuid": "u1", "name": "t.a", "args": "('日本語',)",
         "hostname": "w@h", "timestamp": 1764086400.0, "clock": 1, "local_received": 1764086400.0},
        {"type": "task-received", "uuid": "u2", "name": "t.b", "args": "('\x1b[2Jx\ny',)",
         "hostname": "w@h", "timestamp": 1764086401.0, "clock": 2, "local_received": 1764086401.0},
    ]  # fmt: skip
    record_copies(tmp_path / "a", [events])
    out = run("query", "tasks", "--archive", tmp_path / "a", "--columns", "uuid,args,name").stdout
    lines = out.splitlines()
    assert "\x1b" not in out and lines[-1] == "2 rows"
    assert lines[2] == "u1    ('日本語',)" + " " * 7 + "t.a"  # 日本語 takes 6 columns
    assert lines[3] == "u2    ('\\x1b[2Jx\\ny',)  t.b"


def _positions(line: str) -> dict[int, str]:
    """The character that starts at each terminal column of ``line``."""
    found, column = {}, 0
    for ch in line:
        found[column] = ch
        column += display_width(ch)
    return found


@settings(max_examples=60, deadline=None)
@given(
    cells=st.lists(st.lists(st.text(max_size=30), min_size=3, max_size=3), max_size=6),
    width=st.integers(20, 120),
)
def test_table_cells_escaped_clipped_aligned(cells, width):
    """Any text: no control character reaches the terminal, lines fit, columns line up."""
    headers = ["a", "b", "c"]
    widths = fit_widths(natural_widths(headers, cells), width)
    lines = table_lines(headers, cells, widths)
    starts = [sum(widths[:j]) + 2 * j for j in range(3)]
    assert lines[1] == "  ".join("-" * w for w in widths)
    for line in lines:
        assert all(ch.isprintable() for ch in line)
        assert display_width(line) <= max(width, 3 * MIN_COLUMN + 4)
        at = _positions(line)
        for start in starts[1:]:
            if start < display_width(line):  # a cell begins exactly under its rule
                assert at[start - 2] == at[start - 1] == " " and start in at
    for row in cells:
        for text, w in zip(row, widths):
            shown = clip(escape(text), w)
            assert display_width(shown) <= w
            assert shown == escape(text) or shown.endswith("…")


# -- export ----------------------------------------------------------------------------------
def test_format_from_the_output_extension(archive, tmp_path):
    """-o x.csv/.json/.ndjson/.jsonl/.parquet picks the format; JSON keeps non-ASCII text."""
    a = ["query", "tasks", "--archive", archive, "--limit", "5"]
    for name in ("x.csv", "x.json", "x.ndjson", "x.jsonl", "x.parquet", "x.txt"):
        result = run(*a, "-o", tmp_path / name)
        assert result.stderr == f"Wrote 5 rows to {tmp_path / name}\n"
    assert pd.read_csv(tmp_path / "x.csv").shape == (5, 30)
    records = json.loads((tmp_path / "x.json").read_text(encoding="utf-8"))
    assert len(records) == 5 and "日本語" in (tmp_path / "x.json").read_text(encoding="utf-8")
    lines = (tmp_path / "x.ndjson").read_text(encoding="utf-8").split("\n")[:-1]
    assert [json.loads(line) for line in lines] == records
    assert (tmp_path / "x.jsonl").read_bytes() == (tmp_path / "x.ndjson").read_bytes()
    assert pq.read_table(tmp_path / "x.parquet").num_rows == 5
    assert (tmp_path / "x.txt").read_text().splitlines()[-1] == "5 rows"


def _expected(archive: Path) -> pa.Table:
    table = archiver.Archive(archive).load("tasks", engine="arrow")
    return pa.table(
        {
            f.name: table[f.name].cast(f.type.value_type)
            if pa.types.is_dictionary(f.type)
            else table[f.name]
            for f in table.schema
        }
    )


def test_export_round_trips_exactly(archive, tmp_path, monkeypatch):
    """csv, ndjson and parquet exports, written in many batches, read back as Archive.load."""
    monkeypatch.setattr(query, "BATCH_ROWS", 1000)  # many batches per file
    want = _expected(archive)
    assert want.num_rows > 5 * 1000
    a = ["query", "tasks", "--archive", archive]
    run(*a, "-o", tmp_path / "x.parquet")
    got = pq.read_table(tmp_path / "x.parquet")
    assert got.equals(archiver.Archive(archive).load("tasks", engine="arrow"))
    run(*a, "-o", tmp_path / "x.csv")
    types = {f.name: f.type for f in want.schema}
    got = pacsv.read_csv(
        tmp_path / "x.csv",
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=types, strings_can_be_null=True, quoted_strings_can_be_null=False
        ),
    )
    assert got.equals(want)
    run(*a, "-o", tmp_path / "x.ndjson")
    lines = (tmp_path / "x.ndjson").read_text(encoding="utf-8").split("\n")[:-1]
    stamp = lambda v: v.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if hasattr(v, "strftime") else v  # noqa: E731
    assert [json.loads(line) for line in lines] == [
        {k: stamp(v) for k, v in row.items()} for row in want.to_pylist()
    ]


def test_stdout_closed_early_stops_quietly(archive):
    """`| head -1`: the export stops at the closed pipe, with no traceback and exit code 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "archiver", "query", "tasks", "--archive", str(archive),
         "--format", "csv"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    first = proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=120) == 0
    assert first.startswith(b'"captured_at","snapshot_id"')
    assert proc.stderr.read() == b""


@pytest.mark.parametrize("command", [["query", "tasks"], ["sql", "SELECT * FROM tasks"]])
def test_output_inside_the_archive_is_refused(tmp_path, archive, command):
    """``-o`` into the archive (a table or partition folder) is refused: it would add rows."""
    copy = tmp_path / "archive"
    shutil.copytree(archive, copy)
    before = archiver.Archive(copy).files("tasks")
    hour = Path(before[0]).parent
    for target in (hour / "x.parquet", copy / "tasks" / "x.csv", copy / "x.csv"):
        message = error_of(*command, "--archive", copy, "-o", target)
        assert message == f"Error: cannot write {target}: it is inside the archive {copy}"
        assert not target.exists()
    assert archiver.Archive(copy).files("tasks") == before
