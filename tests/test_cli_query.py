"""``archiver query`` and ``archiver info``."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import archiver
from archiver.cli import cli
from archiver.cli.cmd_query import parse_where

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
    assert out[0].split()[:3] == ["captured_at", "snapshot_id", "uuid"]
    assert set(out[1]) <= {"-", " "}
    assert len(out) == 5
    assert out[2].startswith("2026-11-25 15:57:42.068")  # times in UTC, to the millisecond
    # tracebacks stay on one line, cut short
    lines = run(
        "query", "tasks", "--archive", archive, "--columns", "uuid,traceback",
        "--where", "state=FAILURE",
    ).output.splitlines()  # fmt: skip
    assert len(lines) == 2 + 2 * 280
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
    assert len(txt.read_text().splitlines()) == 4
    # empty results
    assert run("query", "tasks", "--archive", archive, "--since", "2030-01-01").output.startswith(
        "captured_at"
    )
    assert (
        json.loads(
            run(
                "query", "tasks", "--archive", archive, "--since", "2030-01-01", "--format", "json"
            ).output
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
    assert "cannot read --where 'state~x'" in error_of(
        "query", "tasks", "--archive", archive, "--where", "state~x"
    )
    assert "cannot compare column runtime" in error_of(
        "query", "tasks", "--archive", archive, "--where", "runtime>fast"
    )
    assert "needs --output" in error_of(
        "query", "tasks", "--archive", archive, "--format", "parquet"
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
