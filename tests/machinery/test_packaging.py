"""Packaging: an installed minivit carries what it needs to run from any folder."""

import os


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
