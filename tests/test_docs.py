"""The README and the command line stay in step."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from archiver.cli import cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_command_has_help_and_is_in_readme(name: str) -> None:
    """Every CLI command answers --help with an example and appears in the README."""
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output
    assert f"archiver {name}" in README


def test_readme_gives_the_two_setup_commands() -> None:
    """The README's set-up is exactly `make demo` and `make test`."""
    assert "make demo" in README
    assert "make test" in README


def test_python_m_archiver_is_the_cli() -> None:
    """`python -m archiver` runs the same click group."""
    import runpy
    import sys

    argv = sys.argv
    sys.argv = ["archiver", "--version"]
    try:
        with pytest.raises(SystemExit) as exc:
            runpy.run_module("archiver", run_name="__main__")
    finally:
        sys.argv = argv
    assert exc.value.code == 0
