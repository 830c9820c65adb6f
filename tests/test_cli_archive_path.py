"""``--archive`` (or ``$ARCHIVER_ARCHIVE``) is checked before any work: one ``Error:`` line."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import archiver
from archiver.archive_path import PathKind, classify_archive_path
from archiver.cli import cli
from archiver.errors import ArchiveNotFound, ArchiverError, NotAnArchiveError
from archiver.storage import resolve

ROOT = Path(__file__).resolve().parent.parent
SMALL = ROOT / "data" / "celery-events-small.jsonl"


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """The small recording as an archive at ``<tmp>/data/archive``."""
    path = tmp_path_factory.mktemp("paths") / "data" / "archive"
    result = CliRunner().invoke(cli, ["record", "--replay", str(SMALL), "--archive", str(path)])
    assert result.exit_code == 0, result.output
    return path


def invoke(*args: object, env: dict[str, str] | None = None):
    return CliRunner(env=env).invoke(cli, [str(a) for a in args])


def commands(path: Path, tmp: Path) -> dict[str, list[object]]:
    """Every command that takes --archive, pointed at ``path``."""
    return {
        "info": ["info", "--archive", path],
        "query": ["query", "tasks", "--archive", path],
        "report": ["report", "--archive", path, "--output", tmp / "r.html"],
        "check": ["check", "--archive", path],
        "compact": ["compact", "--archive", path],
        "expire": ["expire", "--archive", path, "--older-than", "1d", "--yes"],
        "cleanup": ["cleanup", "--archive", path, "--older-than", "1d", "--yes"],
        "record": ["record", "--replay", SMALL, "--archive", path, "-q"],
    }


def assert_error_everywhere(path: Path, tmp: Path, message: str, skip: tuple[str, ...] = ()):
    """Every command fails with exactly ``Error: <message>``, exit code 1, nothing written."""
    for name, args in commands(path, tmp).items():
        if name in skip:
            continue
        result = invoke(*args)
        assert result.exit_code == 1, (name, result.output)
        assert result.output == f"Error: {message}\n", name
    assert not (tmp / "r.html").exists()


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_file(archive, tmp_path):
    """A file is named as such by every command; record writes nothing."""
    events = tmp_path / "events.jsonl"
    events.write_text(SMALL.read_text())
    assert_error_everywhere(events, tmp_path, f"{events} is a file, not an archive folder")
    assert tree(tmp_path) == ["events.jsonl"]


def test_the_parent_of_an_archive(archive, tmp_path):
    """The archive's parent: every command asks "did you mean" the archive."""
    before = tree(archive.parent)
    parent = archive.parent
    assert_error_everywhere(
        parent, tmp_path, f"{parent} is not an archive but holds one: did you mean {archive}?"
    )
    assert tree(archive.parent) == before


def test_a_table_folder(archive, tmp_path):
    """A table folder: every command names the table and the archive, its parent."""
    before = tree(archive)
    table = archive / "tasks"
    assert_error_everywhere(
        table, tmp_path, f"{table}: that is the tasks table; the archive is its parent {archive}"
    )
    partition = next(table.iterdir())
    assert_error_everywhere(
        partition,
        tmp_path,
        f"{partition}: that is a partition of the tasks table; the archive is {archive}",
    )
    assert tree(archive) == before


def test_a_folder_that_is_not_an_archive(tmp_path, monkeypatch):
    """A folder of other folders (the repository) is no archive: no bogus tables listed."""
    other = tmp_path / "project"
    for name in ("bench", "tests"):
        (other / name).mkdir(parents=True)
        (other / name / "x.py").write_text("")
    message = (
        f"{other} is not an archive: none of its folders (bench, tests) holds date= partitions"
    )
    assert_error_everywhere(other, tmp_path, message)
    monkeypatch.chdir(ROOT)
    result = invoke("info", "--archive", ".")
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: . is not an archive: none of its folders (")
    assert "bench" in result.output and "table" not in result.output


def test_missing_archive(tmp_path):
    """A missing archive is an error for every command but record, which creates it."""
    missing = tmp_path / "missing"
    assert_error_everywhere(missing, tmp_path, f"no archive at {missing}", skip=("record",))
    result = invoke("record", "--replay", SMALL, "--archive", missing, "-q")
    assert result.exit_code == 0, result.output
    assert invoke("info", "--archive", missing).exit_code == 0


def test_a_place_that_cannot_be_written(archive, tmp_path):
    """Under a file an archive cannot be created: writing commands say why, before any work."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    path = blocker / "archive"
    result = invoke("record", "--replay", SMALL, "--archive", path, "-q")
    assert result.exit_code == 1, result.output
    assert result.output == f"Error: cannot write the archive {path}: {blocker} is a file\n"
    for command in ("info", "compact"):  # nothing to read or maintain there
        assert invoke(command, "--archive", path).output == f"Error: no archive at {path}\n"


def test_an_unreachable_object_store_is_one_error_line(tmp_path):
    """An s3:// archive whose endpoint refuses connections: one `Error:` line, exit 1."""
    from tests.livecluster import free_port

    uri = f"s3://bucket/celery?endpoint_override=127.0.0.1:{free_port()}&scheme=http"
    env = {"AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_REGION": "us-east-1"}
    for args in (["info", "--archive", uri], ["record", "--replay", SMALL, "--archive", uri]):
        result = invoke(*args, env=env)
        assert result.exit_code == 1, result.output
        assert result.output.startswith("Error: cannot reach the archive s3://bucket/celery")
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_archiver_archive_is_every_command_default(archive, tmp_path):
    """$ARCHIVER_ARCHIVE is the default --archive of every command; --archive overrides it."""
    env = {"ARCHIVER_ARCHIVE": str(archive)}
    info = invoke("info", env=env)
    assert info.exit_code == 0, info.output
    assert info.output.startswith(f"archive: {archive} ")
    assert invoke("query", "tasks", "--limit", "1", env=env).exit_code == 0
    assert invoke("check", env=env).exit_code == 0
    assert invoke("compact", "--dry-run", env=env).exit_code == 0
    table = invoke("info", env={"ARCHIVER_ARCHIVE": str(archive / "tasks")})
    assert table.output == (
        f"Error: {archive}/tasks: that is the tasks table; the archive is its parent {archive}\n"
    )
    missing = tmp_path / "none"
    overridden = invoke("info", "--archive", missing, env=env)
    assert overridden.output == f"Error: no archive at {missing}\n"
    for command in ("info", "query", "record", "compact", "expire", "cleanup", "check", "report"):
        assert "ARCHIVER_ARCHIVE" in invoke(command, "--help").output, command


def test_python_api_gets_the_same_errors(archive, tmp_path):
    """Archive(path) readers raise the CLI's messages; a missing archive is a FileNotFoundError."""
    table = archive / "tasks"
    with pytest.raises(NotAnArchiveError) as caught:
        archiver.Archive(table).load()
    assert (
        str(caught.value)
        == f"{table}: that is the tasks table; the archive is its parent {archive}"
    )
    with pytest.raises(NotAnArchiveError, match="did you mean"):
        archiver.load(archive.parent)
    with pytest.raises(FileNotFoundError, match="no archive at"):
        archiver.Archive(tmp_path / "none").load()
    with pytest.raises(ArchiveNotFound):
        archiver.Archive(tmp_path / "none").compact()
    assert len(archiver.Archive(archive).load()) > 0


def test_keyword_typos_name_the_public_function(archive):
    """A mistyped keyword names load(), not an internal function."""
    with pytest.raises(
        TypeError, match=r"^(Archive\.)?load\(\) got an unexpected keyword argument"
    ):
        archiver.Archive(archive).load(star="1h")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"^load\(\) got an unexpected keyword argument 'star'$"):
        archiver.load(archive, star="1h")  # type: ignore[call-arg]


NAMES = st.sampled_from(
    ["tasks", "workers", "date=2026-11-25", "hour=3", "data", "x", ".hidden", "_q"]
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    folders=st.lists(st.lists(NAMES, min_size=1, max_size=3), max_size=5),
    files=st.lists(st.lists(NAMES, min_size=1, max_size=3), max_size=3),
)
def test_any_folder_tree_is_classified_or_named(folders, files):
    """Any tree of folders and files: an archive, or one ArchiverError line, never a crash."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        for parts in folders:
            (root.joinpath(*parts)).mkdir(parents=True, exist_ok=True)
        for parts in files:
            path = root.joinpath(*parts)
            if not path.exists():
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("")
                except OSError:
                    pass  # a file is already where a folder would go
        found = classify_archive_path(resolve(str(root)))
        assert (found.problem is None) == (found.kind is PathKind.ARCHIVE)
        assert found.problem is None or "\n" not in found.problem
        try:
            archiver.Archive(root).tables()
            archiver.Archive(root).require()
        except ArchiverError as exc:
            assert str(exc) == found.problem
        else:
            assert found.kind is PathKind.ARCHIVE
        assert os.path.isdir(root)


def test_unreachable_object_store_is_one_error_line_without_credentials(tmp_path):
    """An S3 archive whose endpoint refuses connections: one masked Error: line per command."""
    uri = "s3://KEY:SECRET@bucket/x?endpoint_override=127.0.0.1:1&scheme=http"
    for name in ("info", "query", "compact"):
        result = invoke(*commands(uri, tmp_path)[name])  # type: ignore[arg-type]
        assert result.exit_code == 1, (name, result.output)
        assert "Traceback" not in result.output and "SECRET" not in result.output
        assert result.output.startswith("Error: cannot reach the archive s3://***@bucket/x"), (
            result.output
        )
        assert len(result.output.splitlines()) == 1, result.output


def test_an_empty_archive_path_is_refused(tmp_path):
    """``--archive ''`` (or an empty ``$ARCHIVER_ARCHIVE``) is named, never read as the cwd."""
    result = invoke("info", "--archive", "")
    assert (result.exit_code, result.output) == (1, "Error: the archive path is empty\n")
    result = invoke("query", "tasks", env={"ARCHIVER_ARCHIVE": ""})
    assert result.exit_code in (0, 1) and "/archive?" not in result.output
    with pytest.raises(NotAnArchiveError, match="the archive path is empty"):
        archiver.Archive("").load("tasks")


@pytest.mark.parametrize("credentials", [None, "/nonexistent"])
def test_a_gcs_archive_that_cannot_be_reached_fails_instead_of_hanging(credentials):
    """gs:// without credentials or network, or with a credentials file that is missing,
    is one Error: line, not pyarrow's 15-minute retry loop (the timeout catches a hang)."""
    env = {k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    if credentials is not None:
        env["GOOGLE_APPLICATION_CREDENTIALS"] = credentials
    result = subprocess.run(
        [sys.executable, "-m", "archiver", "info", "--archive", "gs://archiver-no-such-bucket/x"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("Error: cannot reach the archive gs://"), result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
