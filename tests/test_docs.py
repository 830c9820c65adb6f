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


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to -."""
    text = heading.strip().lower()
    return "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")


def test_readme_links_point_at_its_headings() -> None:
    """Every `(#anchor)` link of the README (its contents list too) names one of its headings."""
    import re

    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", README, re.M)}
    links = re.findall(r"\]\(#([^)]+)\)", README)
    assert len(links) >= 15
    assert sorted(set(links) - anchors) == []


@pytest.mark.parametrize(
    "section",
    ["Installation", "Turning on Celery events", "Replaying a file from Python",
     "Opening the notebook", "Object storage"],
)  # fmt: skip
def test_readme_has_the_first_ten_minutes_sections(section: str) -> None:
    """The sections a new user needs exist and are listed in the contents at the top."""
    top = README.split("## Two commands", 1)[0]
    assert f"\n## {section}\n" in README or f"\n### {section}\n" in README
    assert f"(#{github_anchor(section)})" in top


def test_no_install_hint_reaches_pypi() -> None:
    """No `pip install 'archiver[...]'` hint: that name on PyPI is another package."""
    import re

    assert not re.search(r"pip install\s+['\"]?archiver\[", README)
    assert "pip install -e '.[" in README
