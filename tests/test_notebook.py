"""notebooks/analysis.ipynb runs top to bottom, and is stored without outputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("matplotlib")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "analysis.ipynb"


def test_notebook_is_stored_without_outputs():
    """Notebook is stored without outputs."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [], "strip the outputs before committing"
        assert cell.execution_count is None
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.timeout(300)
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    """Executed from a copy, on an archive it records itself into a temporary directory."""
    archive = tmp_path / "archive"
    monkeypatch.setenv("ARCHIVER_ARCHIVE", str(archive))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    copy = tmp_path / "analysis.ipynb"
    shutil.copy(NOTEBOOK, copy)
    nb = nbformat.read(copy, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=240,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError if any cell raises
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # cluster, throughput, latency, failures, workers
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"{archive}: 2,110 tasks, 2 workers" in text
    assert (archive / "tasks").is_dir()  # recorded where it was told, not into the repo
