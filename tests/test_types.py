"""The package's types hold for a user's code: mypy reads a small program using the API.

mypy runs once (module fixture) on a program of numbered lines; each test reads what
mypy said about its lines. ``make lint`` checks the package itself with ``mypy --strict``.
"""

from __future__ import annotations

import re

import pytest
from mypy import api

#: line -> the expression whose type mypy reveals (or a statement it must accept/refuse)
PROGRAM = {
    "load_default": 'reveal_type(archiver.load("a"))',
    "load_arrow": 'reveal_type(archiver.load("a", engine="arrow"))',
    "load_dask": 'reveal_type(archiver.load("a", "workers", engine="dask"))',
    "method_default": 'reveal_type(archiver.Archive("a").load("snapshots"))',
    "method_dask": 'reveal_type(archiver.Archive("a").load(engine="dask"))',
    "latest_default": 'reveal_type(archiver.Archive("a").latest())',
    "history_default": 'reveal_type(archiver.Archive("a").history("u"))',
    "latest_dask": 'archiver.Archive("a").latest(engine="dask")',
    "unknown_engine": 'archiver.load("a", engine="polars")',
    "camera_state": "archiver.Polaroid(archiver.State())",
    "camera_no_state": "archiver.Polaroid(42)",
    "state_worker": 'reveal_type(archiver.State().workers.peek("w"))',
    "state_take": "reveal_type(archiver.State().take_changes())",
}


@pytest.fixture(scope="module")
def mypy_says(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """What mypy reports about each line of :data:`PROGRAM`, by the line's name."""
    root = tmp_path_factory.mktemp("types")
    names = list(PROGRAM)
    source = root / "program.py"
    source.write_text("import archiver\n" + "".join(PROGRAM[n] + "\n" for n in names))
    out, err, _ = api.run(
        [
            "--strict",
            "--follow-imports=silent",  # the package is checked by `make lint`, not here
            "--cache-dir",
            str(root / "cache"),
            "--no-error-summary",
            str(source),
        ]
    )
    assert not err, err
    said: dict[str, list[str]] = {n: [] for n in names}
    for line in out.splitlines():
        m = re.match(rf"{re.escape(str(source))}:(\d+): (?:note|error): (.*)", line)
        assert m, line
        said[names[int(m.group(1)) - 2]].append(m.group(2))
    return said


def revealed(said: list[str]) -> str:
    """The type in mypy's ``Revealed type is "…"`` note."""
    (note,) = said
    m = re.fullmatch(r'Revealed type is "(.*)"', note)
    assert m, note
    return m.group(1)


@pytest.mark.parametrize(
    "line", ["load_default", "method_default", "latest_default", "history_default"]
)
def test_the_default_engine_gives_a_pandas_dataframe(
    mypy_says: dict[str, list[str]], line: str
) -> None:
    """Without ``engine``, load/latest/history are typed as a pandas DataFrame."""
    assert revealed(mypy_says[line]) == "pandas.core.frame.DataFrame"


@pytest.mark.parametrize("line", ["load_dask", "method_dask"])
def test_engine_dask_gives_a_dask_dataframe(mypy_says: dict[str, list[str]], line: str) -> None:
    """``engine="dask"`` is typed as a dask DataFrame, for the function and the method."""
    assert revealed(mypy_says[line]).startswith("dask.dataframe.")
    assert revealed(mypy_says[line]).endswith(".DataFrame")


def test_engine_arrow_is_not_a_pandas_dataframe(mypy_says: dict[str, list[str]]) -> None:
    """``engine="arrow"`` is typed as pyarrow's Table (``Any``: pyarrow ships no types)."""
    assert revealed(mypy_says["load_arrow"]) == "Any"


@pytest.mark.parametrize("line", ["latest_dask", "unknown_engine"])
def test_an_engine_a_call_does_not_take_is_a_type_error(
    mypy_says: dict[str, list[str]], line: str
) -> None:
    """An engine the call refuses at run time is refused by mypy too."""
    assert any("No overload variant" in said for said in mypy_says[line]), mypy_says[line]


def test_the_camera_takes_a_state_by_its_protocol(mypy_says: dict[str, list[str]]) -> None:
    """``archiver.State`` fits the camera's ``SnapshotState``; an int does not."""
    assert mypy_says["camera_state"] == []
    assert any("SnapshotState" in said for said in mypy_says["camera_no_state"])


def test_state_annotations_name_its_classes(mypy_says: dict[str, list[str]]) -> None:
    """``State.Worker``/``State.Task`` do not hide the classes from the state's annotations."""
    assert revealed(mypy_says["state_take"]) == (
        "tuple[list[archiver.state.Task], list[archiver.state.Worker]]"
    )
    assert revealed(mypy_says["state_worker"]) == "archiver.state.Worker | None"
