"""The example scripts (examples/) run, on tiny settings, and say what they teach."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(script, *args):
    env = dict(os.environ, PYTHONPATH=ROOT, MINIVIT_DATA="")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), *args],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_overfit_one_batch_example_drives_the_loss_down():
    out = run("overfit_one_batch.py", "--steps", "40", "--batch", "16")
    final = float(re.search(r"final loss (\d+\.\d+)", out).group(1))
    assert final < 1.0, out        # from ln 10 = 2.30


def test_the_quick_look_command_in_the_docstring_learns():
    """The reference experiment's quick look (2 epochs on 900 sample images) runs as written
    and learns: the loss falls below ln 10 = 2.30 and the test accuracy (500 images) is
    well above chance (10%; 17% is over 5 standard deviations above it)."""
    with open(os.path.join(ROOT, "examples", "train_cifar10.py")) as f:
        line = next(l for l in f if "# a quick look" in l)
    args = line.split("#")[0].split()[2:]          # after "python examples/train_cifar10.py"
    out = run("train_cifar10.py", "--backend", "numpy", *args)
    losses = [float(v) for v in re.findall(r"epoch +\d+  loss (\d+\.\d+)", out)]
    assert len(losses) == 2 and losses[-1] < 2.25 and losses[-1] < losses[0], out
    assert float(re.search(r"test accuracy (\d\.\d{4})", out).group(1)) > 0.17, out


def test_walkthrough_example_runs():
    out = run("walkthrough.py")
    for piece in ("patch embedding", "multi-head self-attention", "transformer block", "the whole ViT"):
        assert f"== {piece}" in out
    assert "FAIL" not in out and "Every piece passed its gradient check." in out
    assert "attention  (2, 2, 5, 5)" in out
    assert "the block is the pieces above, x1 + mlp(norm2(x1)): True" in out
