"""--engine: a fast run first checks the fast path against the engine and stops with one
line when a student's edit of the engine made them differ; --engine reference trains the
engine as edited. The edit is made as a student would: in the package's file."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minivit
from minivit.engine import layers
from minivit.engine.model import ViT
from minivit.fast import check_against_engine

PACKAGE = Path(minivit.__file__).resolve().parent
TRAIN = ["train", "--preset", "sample", "--epochs", "1", "--limit-train", "64", "--depth", "1",
         "--batch-size", "32", "--no-progress", "--no-plots"]


def test_the_check_passes_on_the_engine_as_shipped():
    assert check_against_engine(ViT(img_size=8, patch_size=4, embed_dim=8, depth=2, num_heads=2,
                                    pool="seq", drop_path=0.3)) is None


def test_a_changed_engine_layer_is_caught_and_named(monkeypatch):
    forward = layers.layernorm_forward
    monkeypatch.setattr(layers, "layernorm_forward", lambda x, w, b, eps=1e-5: forward(x, w, b, eps=0.1))
    problem = check_against_engine(ViT(img_size=8, patch_size=4, embed_dim=8, depth=2, num_heads=2))
    assert problem.startswith("the fast path disagrees with the engine")
    assert "--engine reference" in problem and "\n" not in problem


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    """A copy of minivit whose engine LayerNorm has eps 0.1 instead of 1e-5, as a student
    might edit engine/layers.py."""
    root = tmp_path_factory.mktemp("student")
    shutil.copytree(PACKAGE, root / "minivit", ignore=shutil.ignore_patterns("__pycache__", "pretrained"))
    path = root / "minivit" / "engine" / "layers.py"
    text = path.read_text()
    assert text.count("def layernorm_forward(x, w, b, eps=1e-5):") == 1
    path.write_text(text.replace("def layernorm_forward(x, w, b, eps=1e-5):",
                                 "def layernorm_forward(x, w, b, eps=0.1):"))
    return root


def run(root, *args):
    env = dict(os.environ, PYTHONPATH=str(root) if root else "", MINIVIT_THREADS="1")
    return subprocess.run([sys.executable, "-m", "minivit", *args], env=env, capture_output=True,
                          text=True, cwd=root or PACKAGE.parent, timeout=300)


def test_a_fast_run_on_an_edited_engine_stops_with_one_line(edited, tmp_path):
    r = run(edited, *TRAIN, "--out", str(tmp_path / "fast"))
    assert r.returncode == 2, r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if "disagrees" in line]
    assert len(errors) == 1 and "--engine reference" in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "fast").exists()          # a failed start leaves no folder


def test_a_reference_run_trains_the_edited_engine(edited, tmp_path):
    r = run(edited, *TRAIN, "--engine", "reference", "--out", str(tmp_path / "edited"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "run by the engine" in r.stdout
    r = run(None, *TRAIN, "--engine", "reference", "--out", str(tmp_path / "shipped"))
    assert r.returncode == 0, r.stdout + r.stderr
    a, b = (np.load(tmp_path / name / "final.npz") for name in ("edited", "shipped"))
    assert not np.allclose(a["head.weight"], b["head.weight"])     # the edit shaped the weights
