"""The notebooks under docs/notebooks/ run from top to bottom and draw their figures.

They are kept as jupytext percent scripts (text diffs, no outputs committed); this test
reads each into a notebook and executes it with nbclient in a fresh kernel (marker
``notebooks``: needs jupytext, nbclient, ipykernel and matplotlib from the ``docs`` extra).
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from tests.conftest import ROOT

NOTEBOOKS = sorted((ROOT / "docs" / "notebooks").glob("*.py"))
NEEDED = ("jupytext", "nbclient", "ipykernel", "matplotlib")


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_draws(path, monkeypatch):
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs the `docs` extra (missing {', '.join(missing)})")
    import jupytext
    import nbclient

    # The kernel is a child process: it finds this checkout of vgg_np through PYTHONPATH.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    notebook = jupytext.read(path)
    nbclient.NotebookClient(notebook, kernel_name="python3", timeout=600).execute()
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    figures = sum("image/png" in o.get("data", {}) for o in outputs)
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors and figures >= 2, f"{path.name}: {len(errors)} errors, {figures} figures"
