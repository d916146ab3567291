"""examples/learn_minivit.ipynb runs top to bottom (its cells assert what they teach,
planted bugs caught included), and is what examples/make_learn_minivit.py writes.
Needs the [notebook] extra (nbclient, nbformat, ipykernel), which CI installs."""

import os
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK = os.path.join(ROOT, "examples", "learn_minivit.ipynb")


def test_the_notebook_is_the_one_the_script_writes_and_has_no_outputs():
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import make_learn_minivit
    finally:
        sys.path.remove(os.path.join(ROOT, "examples"))
    committed = nbformat.read(NOTEBOOK, as_version=4)
    built = make_learn_minivit.build()
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in built.cells], \
        "the notebook differs from its script: run python examples/make_learn_minivit.py"
    assert all(not c.get("outputs") for c in committed.cells if c.cell_type == "code")


def test_the_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("MINIVIT_DATA", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()                       # raises CellExecutionError at the first failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    assert "SOME GRADIENTS ARE WRONG" in text                  # the planted bugs were caught
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4   # the pictures were drawn
