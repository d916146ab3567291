"""README.md: its code blocks run as written, the commands it states are the ones CI runs,
its file map and its links hold."""

import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def readme_blocks():
    with open(os.path.join(ROOT, "README.md")) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_training_from_python_runs(tmp_path, monkeypatch, capsys):
    block = next(b for b in readme_blocks() if "from minivit.train import train" in b)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    accuracy = float(re.search(r"test accuracy (\d\.\d{3}) on 500 images", capsys.readouterr().out).group(1))
    assert accuracy > 0.15                       # one epoch: well above chance (10%)
    summary = json.loads((tmp_path / "runs" / "from-python" / "summary.json").read_text())
    assert summary["test_acc"] == pytest.approx(accuracy, abs=5e-4) and summary["test_loss"] < 2.25


def test_training_step_by_hand_runs(capsys):
    block = next(b for b in readme_blocks() if "opt.step()" in b)
    exec(compile(block, "README.md", "exec"), {})
    loss = float(re.search(r"loss (\d+\.\d{4})", capsys.readouterr().out).group(1))
    assert abs(loss - 2.3026) < 0.15             # an untrained model: about ln 10 on 10 classes


def test_readme_states_the_test_commands_and_the_one_ci_runs():
    """The default tier (`python -m pytest`, needing only the [test] extra) and the full
    suite (`--full`), which CI runs: the tiers tests/conftest.py defines."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    assert "pip install -e .[test] && python -m pytest -q" in readme
    full = "pip install -e .[test,full] && python -m pytest --full -q"
    assert full in readme and full in ci


def test_readme_states_the_main_job_command():
    with open(os.path.join(ROOT, "README.md")) as f:
        assert "pip install -e .[plot] && minivit train" in f.read()


def test_the_file_map_lists_every_module_and_only_real_files():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    listed = re.findall(r"^\| `([\w./]+)` \|", readme, re.M)
    for path in listed:
        assert os.path.exists(os.path.join(ROOT, path)), f"README lists {path}, which does not exist"
    package = os.path.join(ROOT, "minivit")
    modules = {os.path.relpath(os.path.join(folder, n), ROOT)
               for folder, _, names in os.walk(package) for n in names
               if n.endswith(".py") and n not in ("__init__.py", "__main__.py")}
    assert modules - set(listed) == set(), "modules missing from README's file map"


def test_links_in_the_readme_and_docs_resolve():
    pages = ["README.md"] + [os.path.join("docs", n) for n in os.listdir(os.path.join(ROOT, "docs"))
                             if n.endswith(".md")]
    for page in pages:
        with open(os.path.join(ROOT, page)) as f:
            text = f.read()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if target.startswith("http"):
                continue
            path = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), target))
            assert os.path.exists(path), f"{page} links to {target}, which does not exist"


def test_readme_is_a_front_page():
    with open(os.path.join(ROOT, "README.md")) as f:
        assert len(f.read().splitlines()) <= 150


def test_the_learning_path_comes_early_and_in_order():
    """The walkthrough's shapes first, then the course (the notebook and the exercises'
    commands), then the derivations, the checks and what overfitting proves."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    learning = readme.index("## Learning from it")
    assert learning < readme.index("## On a GPU") and learning < readme.index("On a cluster")
    section = readme[learning:].split("\n## ")[0]
    steps = ["examples/walkthrough.py", "examples/learn_minivit.ipynb", "minivit exercises new",
             "minivit exercises check", "minivit train --layers", "docs/gradients.md",
             "minivit gradcheck", "examples/overfit_one_batch.py"]
    assert [section.index(s) for s in steps] == sorted(section.index(s) for s in steps)
    assert "reference post" in section and "SimpleViT" in section
