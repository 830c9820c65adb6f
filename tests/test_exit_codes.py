"""README's exit-code rule: 0, 1 (an Error: line), 2 (usage), 69 (broker), 74 (rows lost)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from archiver.cli import cli

from .livecluster import free_port

ROOT = Path(__file__).resolve().parent.parent
SMALL = ROOT / "data" / "celery-events-small.jsonl"


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """The small recording, as an archive."""
    path = tmp_path_factory.mktemp("codes") / "archive"
    result = CliRunner().invoke(cli, ["record", "--replay", str(SMALL), "--archive", str(path)])
    assert result.exit_code == 0, result.output
    return path


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_0_success(archive):
    """A command that did its work exits 0, and so does a plan shown without --yes."""
    for args in (
        ["info", "--archive", archive],
        ["query", "tasks", "--archive", archive, "--limit", "2"],
        ["expire", "--archive", archive, "--older-than", "1d"],
        ["compact", "--archive", archive, "--keep", "latest"],
    ):
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output)


def test_1_runtime_error_is_one_error_line(archive, tmp_path):
    """A runtime mistake (no archive, a bad time) is exactly one Error: line and exit code 1."""
    missing = tmp_path / "missing"
    for args, message in (
        (["info", "--archive", missing], f"no archive at {missing}"),
        (
            ["compact", "--archive", archive, "--before", "someday"],
            "invalid time 'someday': give an ISO time (2026-11-25T10:00) "
            "or a duration ago (2h, 7d)",
        ),
    ):
        result = invoke(*args)
        assert result.exit_code == 1, result.output
        assert result.output == f"Error: {message}\n"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["record", "--replay", SMALL, "--freq", "0"],
            "Error: Invalid value for '-F' / '--frequency' / '--freq': "
            "0.0 is not in the range x>0.",
        ),
        (
            ["record", "--replay", SMALL, "--mode", "delta"],
            "Error: Invalid value for '--mode': 'delta' is not one of 'changes', 'full'.",
        ),
        (
            ["record", "--replay", SMALL, "--speed", "-1"],
            "Error: Invalid value for '--speed': -1.0 is not in the range x>=0.",
        ),
        (
            ["record", "--replay", SMALL, "--maxrate", "often"],
            "Error: Invalid value for '-r' / '--maxrate': invalid maxrate 'often'",
        ),
        (
            ["record", "--replay", SMALL, "--duration", "30"],
            "Error: Invalid value for '--duration': invalid duration '30'",
        ),
        (
            ["compact", "--keep", "some"],
            "Error: Invalid value for '--keep': 'some' is not one of 'all', 'latest'.",
        ),
        (["query", "tasks", "--limit", "-1"], "Error: Invalid value for '--limit': "),
        (["report", "--top", "0", "-o", "r.html"], "Error: Invalid value for '--top': "),
        (
            ["query", "tasks", "--tail", "1", "--limit", "1"],
            "Error: --limit (the oldest rows) and --tail (the newest) exclude each other",
        ),
        (["query", "tasks", "--format", "parquet"], "Error: --format parquet needs --output"),
        (["sql", "SELECT 1", "--format", "parquet"], "Error: --format parquet needs --output"),
        (["query", "tasks", "--columns", ","], "Error: --columns needs at least one column"),
        (
            ["expire"],
            "Error: nothing to expire: give --older-than DURATION and/or --state STATE=DURATION",
        ),
    ],
)
def test_2_usage_error(archive, args, error):
    """A bad option value is a usage error: exit code 2, click's Usage and Error lines."""
    result = invoke(*args, "--archive", archive)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Usage: ")
    assert result.output.splitlines()[-1].startswith(error)


def test_frequency_is_spelled_as_celery_does(tmp_path):
    """-F, --frequency and --freq are one option; -c/--camera exists, as in `celery events`."""
    for flag in ("-F", "--frequency", "--freq"):
        result = invoke("record", "--replay", SMALL, "--archive", tmp_path / flag, flag, "2", "-q")
        assert result.exit_code == 0, result.output
    help_text = invoke("record", "--help").output
    assert "-F, --frequency, --freq" in help_text and "-c, --camera" in help_text


def test_69_broker_unavailable(tmp_path):
    """No broker listening on the port: exit code 69 and one Error line."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = invoke("record", "--broker", url, "--archive", tmp_path / "a")
    assert result.exit_code == 69, result.output
    assert result.stderr.startswith("Error: cannot connect to the broker")
    assert len(result.stderr.strip().splitlines()) == 1


def test_74_rows_unwritten(tmp_path):
    """Rows that could not be written (a file where the tasks table goes): exit code 74."""
    arch = tmp_path / "arch"
    arch.mkdir()
    (arch / "tasks").write_text("")
    result = invoke("record", "--replay", SMALL, "--archive", arch, "-q")
    assert result.exit_code == 74, result.output
    assert "\nError: 311 rows could not be written to " in result.stderr
