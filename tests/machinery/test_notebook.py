"""examples/learn_minivit.ipynb, the course's front page, runs top to bottom both as
shipped (every exercise "not done", the training cell saying there is nothing of the
learner's to train on) and with the engine's functions in the exercises' cells (every
exercise right, a ViT trained on them); it is what examples/make_learn_minivit.py writes.
Needs the [notebook] extra (nbclient, nbformat, ipykernel), which CI installs."""

import os
import re
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from minivit.course.exercises import EXERCISES  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK = os.path.join(ROOT, "examples", "learn_minivit.ipynb")
CORE = [e for e in EXERCISES if not e.extra]


def _generator():
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import make_learn_minivit
    finally:
        sys.path.remove(os.path.join(ROOT, "examples"))
    return make_learn_minivit


def _run(nb, folder, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("MINIVIT_DATA", raising=False)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(folder)}})
    client.execute()                       # raises CellExecutionError at the first failing cell
    return nb


def _printed(nb, marker):
    """What the code cells whose source contains marker printed, cell by cell."""
    return ["".join(o.get("text", "") for o in c.outputs)
            for c in nb.cells if c.cell_type == "code" and marker in c.source]


def test_the_notebook_is_the_one_the_script_writes_and_has_no_outputs():
    committed = nbformat.read(NOTEBOOK, as_version=4)
    built = _generator().build()
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in built.cells], \
        "the notebook differs from its script: run python examples/make_learn_minivit.py"
    assert all(not c.get("outputs") for c in committed.cells if c.cell_type == "code")


def test_each_exercise_has_its_stub_and_its_check_and_no_solution():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    _, stubs = _generator().stub_sources()
    sources = [c.source for c in nb.cells if c.cell_type == "code"]
    for e in CORE:
        stub = sources.index(stubs[e.name])
        assert "raise NotImplementedError" in stubs[e.name]
        assert sources[stub + 1] == f"verdict({e.name})"
    assert not any(f"import {e.name}" in s or f"{e.name} =" in s for s in sources for e in CORE)


def test_the_notebook_runs_as_shipped_every_exercise_not_done(tmp_path, monkeypatch):
    nb = _run(nbformat.read(NOTEBOOK, as_version=4), tmp_path, monkeypatch)
    verdicts = _printed(nb, "verdict(")
    assert len(verdicts) == len(CORE)
    assert all(re.match(rf"\s*\d+\s+{e.name}\s+not done", v) for e, v in zip(CORE, verdicts))
    assert "your notebook has no exercise done yet" in _printed(nb, "student=globals()")[0]
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4   # the pictures were drawn


def test_the_notebook_with_the_engines_functions_is_all_right_and_trains(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    _, stubs = _generator().stub_sources()
    solution = {stubs[e.name]: f"from minivit.engine.{e.module} import {e.name}" for e in CORE}
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = solution.get(cell.source, cell.source)
            if "student=globals()" in cell.source:           # a short run: one epoch, a tiny ViT
                assert 'epochs=15)' in cell.source
                cell.source = cell.source.replace(
                    'epochs=15)', 'epochs=1, limit_train=256, embed_dim=16, depth=1, num_heads=2)')
    nb = _run(nb, tmp_path, monkeypatch)
    verdicts = _printed(nb, "verdict(")
    assert all(re.match(rf"\s*\d+\s+{e.name}\s+right", v) for e, v in zip(CORE, verdicts)), verdicts
    trained = _printed(nb, "student=globals()")[0]
    assert "Your functions: 0 of your notebook" in trained            # the engine's, imported
    assert re.search(r"Your ViT, on your gradients: \d+\.\d% on 500 test images", trained)
