"""notebooks/analysis.ipynb runs top to bottom, and is stored with its (small) outputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("matplotlib")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "analysis.ipynb"
#: Most bytes the stored notebook may take, outputs included.
MAX_BYTES = 450_000

#: Run first in the kernel: before the inline backend shows and closes the figures (at
#: plt.show() or at the end of a cell), note every chart whose axes lack a label or whose
#: legend covers a plot.
CHECK_CHARTS = """
_charts = {"seen": 0, "problems": []}

def _check_charts():
    import matplotlib.pyplot as plt

    for number in plt.get_fignums():
        fig = plt.figure(number)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        plots = [ax for ax in fig.axes if ax.has_data()]
        _charts["seen"] += bool(plots)
        def y_named(ax):  # a y label, or names as ticks (task names, workers)
            ticks = [t.get_text() for t in ax.get_yticklabels()]
            names = any(t and not t.lstrip("\\u2212-").replace(".", "").isdigit() for t in ticks)
            return bool(ax.get_ylabel()) or names

        def y_shared(ax):  # panels side by side: the left one names the shared y axis
            blank = not any(t.get_text() for t in ax.get_yticklabels())
            return blank and any(y_named(other) for other in plots)

        for ax in plots:
            name = ax.get_title() or ax.get_title("left") or repr(fig)
            if not ax.get_xlabel() or not (y_named(ax) or y_shared(ax)):
                _charts["problems"].append(f"{name}: no axis label")
            legend = ax.get_legend()
            if legend is None:
                continue
            box = legend.get_window_extent(renderer)
            for other in plots:
                inside = box.overlaps(other.get_window_extent(renderer))
                if inside:
                    _charts["problems"].append(f"{name}: the legend covers a plot")

get_ipython().events.register("post_execute", _check_charts)  # charts a cell ends with

import matplotlib.pyplot as plt

_show = plt.show


def _checked_show(*args, **kwargs):  # charts shown (and closed) by plt.show()
    _check_charts()
    return _show(*args, **kwargs)


plt.show = _checked_show
"""


def outputs(nb) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def test_notebook_is_stored_with_small_outputs():
    """The committed notebook shows its charts: executed in order on the demo archive, small."""
    assert NOTEBOOK.stat().st_size < MAX_BYTES
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert all(c.outputs for c in code), "run it: make notebook, then Run All, then save"
    stored = outputs(nb)
    assert not [o for o in stored if o.output_type == "error"]
    assert len([o for o in stored if "image/png" in o.get("data", {})]) >= 10
    text = "".join(o.get("text", "") for o in stored if o.output_type == "stream")
    assert "../data/archive: 2,110 tasks, 2 workers" in text  # the demo archive
    assert str(ROOT) not in NOTEBOOK.read_text()  # no path of the machine it ran on
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.timeout(300)
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    """Executed from a copy, on an archive it records itself into a temporary directory;
    every chart has axis labels and no legend over a plot."""
    archive = tmp_path / "archive"
    monkeypatch.setenv("ARCHIVER_ARCHIVE", str(archive))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    copy = tmp_path / "analysis.ipynb"
    shutil.copy(NOTEBOOK, copy)
    nb = nbformat.read(copy, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(CHECK_CHARTS))
    nb.cells.append(nbformat.v4.new_code_cell('print("charts:", _charts)'))
    client = nbclient.NotebookClient(
        nb,
        timeout=240,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError if any cell raises
    ran = outputs(nb)
    assert not [o for o in ran if o.output_type == "error"]
    images = [o for o in ran if "image/png" in o.get("data", {})]
    assert len(images) >= 10  # report charts, failures over time and per worker, latency...
    text = "".join(o.get("text", "") for o in ran if o.output_type == "stream")
    assert "archive: 2,110 tasks, 2 workers" in text
    assert (archive / "tasks").is_dir()  # recorded where it was told, not into the repo
    checked = text.split("charts: ", 1)[1]
    assert "'problems': []" in checked, checked
    assert int(checked.split("'seen': ", 1)[1].split(",")[0]) >= 10
