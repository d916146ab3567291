"""Packaging: an installed minivit carries what it needs to run from any folder; its
[notebook] extra runs the notebook."""

import configparser
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest


def test_the_sample_and_the_trained_model_travel_inside_the_package(tmp_path):
    """A wheel (what `pip install .` installs) holds the shipped sample and the shipped
    model, so an installed minivit trains and evaluates from any folder."""
    import subprocess
    import sys
    import zipfile
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import shutil
    src = tmp_path / "src"                  # a copy, so the build leaves the checkout alone
    shutil.copytree(root, src, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "build", "dist",
                                                             "*.egg-info", "__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
                           str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("minivit-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("data_batch_1", "test_batch", "batches.meta"):
        assert f"minivit/sample/cifar-10-batches-py/{f}" in names
    shipped = os.path.join(root, "minivit", "pretrained")
    for f in os.listdir(shipped) if os.path.isdir(shipped) else []:
        assert f"minivit/pretrained/{f}" in names, f


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FRONT_ENDS = {"jupyterlab", "notebook"}      # what `jupyter lab` / `jupyter notebook` come from


def requirements(option, section="options.extras_require"):
    """setup.cfg's requirement names (lower case, '_' as '-') under [section] option."""
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    return {re.match(r"[A-Za-z0-9._-]+", line.strip()).group(0).lower().replace("_", "-")
            for line in cfg[section][option].splitlines() if line.strip()}


def test_the_notebook_extra_brings_a_front_end_and_what_the_notebook_imports():
    """`pip install -e .[notebook]` gives `jupyter lab` to open examples/learn_minivit.ipynb
    in and `jupyter nbconvert` to run it, with every package its cells import; `full`
    (what CI installs) holds all of it too."""
    notebook = requirements("notebook")
    assert notebook & FRONT_ENDS, f"the notebook extra has no Jupyter front end ({sorted(FRONT_ENDS)})"
    assert "nbconvert" in notebook
    with open(os.path.join(ROOT, "examples", "learn_minivit.ipynb")) as f:
        cells = [c for c in json.load(f)["cells"] if c["cell_type"] == "code"]
    source = "\n".join("".join(c["source"]) for c in cells)
    imported = {m.split(".")[0] for m in re.findall(r"^\s*(?:import|from)\s+([\w.]+)", source, re.M)}
    stdlib = getattr(sys, "stdlib_module_names", set())
    needed = imported - stdlib - {"minivit"}
    assert needed and needed <= notebook | requirements("install_requires", "options"), needed
    assert notebook <= requirements("full"), notebook - requirements("full")


def test_the_installed_jupyterlab_starts():
    """Where the notebook extra is installed, JupyterLab runs (`jupyter lab` is this module)."""
    if importlib.util.find_spec("jupyterlab") is None:
        pytest.skip("jupyterlab is not installed (pip install -e .[notebook])")
    proc = subprocess.run([sys.executable, "-m", "jupyterlab", "--version"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.match(r"\d+\.\d+", proc.stdout.strip()), proc.stdout


def test_the_mkl_extra_is_in_full_and_is_what_the_fast_path_finds():
    """`pip install minivit[mkl]` brings the wheel whose libmkl_rt fast/blas.py loads; CI's
    `full` holds it, so the tests of the fast path on oneMKL run there."""
    assert requirements("mkl") == {"mkl"} and "mkl" in requirements("full")
    from minivit.fast import blas
    if importlib.util.find_spec("mkl") is None and not blas._candidates():
        pytest.skip("the mkl wheel is not installed")
    assert blas.find_mkl() is not None
