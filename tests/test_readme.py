"""The README's examples run, and return data, on the bundled sample.

Every fenced ``sh`` and ``python`` block of README.md is run against a fresh copy of
the demo archive (``make demo``'s), unless the line before its fence is
``<!-- not run: REASON -->`` (an example for a live cluster, object storage or cron).
Shell lines are run as the real program; ``query``, ``sql`` and ``files`` must print
rows, and no command may end with an empty-result note. The ``Example:`` lines of every
command's ``--help`` are run the same way, through a shell (they may redirect).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SAMPLE = ROOT / "data" / "celery-events-sample.jsonl"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.+?)\s*-->\s*$")
#: Lines of a shell block that set up a machine rather than use archiver.
SETUP = ("make ", "pip ", "python -m pip ", "cd ", ". .venv/bin/activate")
#: Commands whose output must hold rows.
ROW_COMMANDS = {"query", "sql", "files"}


def blocks() -> list[tuple[int, str, str, str | None]]:
    """(line number, language, code, reason it is not run) of every sh/python block."""
    found = []
    for match in FENCE.finditer(README):
        lang = match.group(1)
        if lang not in ("sh", "python"):
            continue
        before = README[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = NOT_RUN.match(before.strip())
        line = README.count("\n", 0, match.start()) + 1
        found.append((line, lang, match.group(2), reason.group(1) if reason else None))
    return found


def shell_lines(code: str) -> list[str]:
    """The commands of a shell block: continuations joined, comments and prompts dropped."""
    lines, current = [], ""
    for raw in code.splitlines():
        current += raw.rstrip("\\").rstrip() + " " if raw.endswith("\\") else raw
        if raw.endswith("\\"):
            continue
        text = current.strip().removeprefix("$ ")
        current = ""
        if text and not text.startswith("#"):
            lines.append(text)
    return lines


RUNNABLE = [b for b in blocks() if b[3] is None]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding data/archive recorded from the sample exactly as `make demo` does."""
    root = tmp_path_factory.mktemp("demo")
    (root / "data").mkdir()
    shutil.copy(SAMPLE, root / "data" / SAMPLE.name)
    subprocess.run(
        [sys.executable, "-m", "archiver", "record", "--replay", str(SAMPLE), "--archive",
         str(root / "data" / "archive"), "--freq", "1", "--quiet"],
        check=True, cwd=root, capture_output=True,
    )  # fmt: skip
    return root


@pytest.fixture
def workdir(demo_dir: Path, tmp_path: Path) -> Path:
    """A fresh copy of the demo folder, so that one block's deletions do not reach the next."""
    shutil.copytree(demo_dir, tmp_path / "w")
    return tmp_path / "w"


def env() -> dict[str, str]:
    """The environment of a README user: no archive variable, the package importable."""
    e = {k: v for k, v in os.environ.items() if k != "ARCHIVER_ARCHIVE"}
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), e.get("PYTHONPATH")]))
    e["COLUMNS"] = "200"
    return e


def test_every_block_is_run_or_says_why() -> None:
    """Most examples run; each one left out names its reason (live cluster, S3, cron...)."""
    all_blocks = blocks()
    skipped = [b for b in all_blocks if b[3] is not None]
    assert len(RUNNABLE) >= 8, [b[0] for b in all_blocks]
    assert len(skipped) <= len(RUNNABLE), [(b[0], b[3]) for b in skipped]
    for line, _, _, reason in skipped:
        assert len(reason or "") >= 10, f"README line {line}: say why it is not run"


@pytest.mark.parametrize(
    ("line", "lang", "code"), [b[:3] for b in RUNNABLE], ids=[f"L{b[0]}" for b in RUNNABLE]
)
def test_readme_block_runs_on_the_sample(line: int, lang: str, code: str, workdir: Path) -> None:
    """A README example runs on the demo archive and, when it reads, returns data."""
    if lang == "python":
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=workdir, env=env(), capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, f"README line {line}:\n{result.stderr[-3000:]}"
        assert "EmptyResultWarning" not in result.stderr, f"README line {line}:\n{result.stderr}"
        return
    for command in shell_lines(code):
        if command.startswith(SETUP):
            continue
        argv = shlex.split(command, comments=True)  # "cmd  # what it does" is a comment, as in sh
        assert argv[0] == "archiver", f"README line {line}: not an archiver command: {command}"
        result = subprocess.run(
            [sys.executable, "-m", "archiver", *argv[1:]], cwd=workdir, env=env(),
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        where = f"README line {line}: {command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        assert result.returncode == 0, where
        assert "Note:" not in result.stderr, where
        if argv[1] in ROW_COMMANDS and "--output" not in argv and "-o" not in argv:
            assert len(result.stdout.strip().splitlines()) >= 2 or argv[1] == "files", where
            assert result.stdout.strip(), where


#: Help examples that need something the sample cannot give: a live broker.
NEEDS_BROKER = ("--broker", " -b ", " -A ", "--app")


def help_examples() -> dict[str, list[str]]:
    """The lines under `Example:` in the group's and each command's --help, by command."""
    from click.testing import CliRunner

    from archiver.cli import cli

    found = {}
    for name in ["", *sorted(cli.commands)]:
        text = CliRunner().invoke(cli, [*([name] if name else []), "--help"]).output
        _, _, after = text.partition("Example:\n")
        lines = [raw.strip() for raw in after.split("\n\n", 1)[0].splitlines() if raw.strip()]
        found[name or "archiver"] = lines
    return found


HELP_EXAMPLES = help_examples()


def test_every_command_has_help_examples() -> None:
    """The group and every command show at least one example under `Example:`."""
    from archiver.cli import cli

    assert {name for name, lines in HELP_EXAMPLES.items() if lines} == {"archiver", *cli.commands}


@pytest.mark.parametrize("name", sorted(HELP_EXAMPLES))
def test_help_examples_run_on_the_sample(name: str, workdir: Path) -> None:
    """The `Example:` lines of `archiver <cmd> --help` run, in order, on the demo archive.

    Reading commands must return data. Only the examples that need a live broker
    (record/tap with --broker or -A) are skipped: the sample has no broker behind it.
    """
    e = env()
    e["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), e["PATH"]])
    ran = 0
    for line in HELP_EXAMPLES[name]:
        if any(flag in f" {line} " for flag in NEEDS_BROKER):
            continue
        result = subprocess.run(
            ["bash", "-c", line], cwd=workdir, env=e, capture_output=True, text=True, timeout=300
        )
        where = f"archiver {name} --help: {line}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        assert result.returncode == 0, where
        assert "Note:" not in result.stderr, where
        assert "Traceback" not in result.stderr, where
        argv = shlex.split(line, comments=True)
        redirected = {">", "-o", "--output"} & set(argv)
        if argv[0] == "archiver" and argv[1] in ROW_COMMANDS and not redirected:
            assert len(result.stdout.strip().splitlines()) >= 2, where
        ran += 1
    if not ran:
        pytest.skip(f"every example of archiver {name} needs a live broker")


#: Commands that write to, delete from or rewrite an archive.
CHANGING = {"record", "compact", "expire", "cleanup"}


def test_no_example_changes_an_archive_it_does_not_name() -> None:
    """Every README and --help example that writes or deletes names its --archive."""
    lines = [cmd for _, lang, code, _ in blocks() if lang == "sh" for cmd in shell_lines(code)]
    lines += [line for examples in HELP_EXAMPLES.values() for line in examples]
    changing = []
    for line in lines:
        argv = shlex.split(line, comments=True)
        if argv[:1] != ["archiver"] or len(argv) < 2:
            continue
        if argv[1] in CHANGING or (argv[1] == "check" and "--quarantine" in argv):
            changing.append(argv)
    assert len(changing) >= 10
    unnamed = [" ".join(argv) for argv in changing if "--archive" not in argv]
    assert not unnamed


def test_make_demo_next_steps_run_on_the_sample(workdir: Path) -> None:
    """The archiver commands `make demo` suggests at its end run on the demo archive."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    suggested = [
        part.strip()
        for line in re.findall(r'^\t@echo "\s*(.+)"$', recipe, re.M)
        for part in line.split("#", 1)[0].split("&&")
        if part.strip().startswith("archiver ")
    ]
    assert len(suggested) >= 2, recipe
    for command in suggested:
        argv = shlex.split(command)
        result = subprocess.run(
            [sys.executable, "-m", "archiver", *argv[1:]], cwd=workdir, env=env(),
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0 and "Note:" not in result.stderr, (command, result.stderr)
        assert result.stdout.strip() or "--output" in argv, command
