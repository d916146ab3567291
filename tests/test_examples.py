"""The example scripts run, on tiny settings."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *args):
    env = dict(os.environ, PYTHONPATH=ROOT, MINIVIT_DATA="")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), *args],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_train_cifar10_example():
    out = run("train_cifar10.py", "--backend", "numpy", "--epochs", "1", "--limit", "300",
              "--embed-dim", "12", "--depth", "1")
    assert "epoch  1  loss" in out
    assert re.search(r"test accuracy 0\.\d{4}", out)


def test_overfit_one_batch_example_drives_the_loss_down():
    out = run("overfit_one_batch.py", "--steps", "40", "--batch", "16")
    final = float(re.search(r"final loss (\d+\.\d+)", out).group(1))
    assert final < 1.0, out        # from ln 10 = 2.30


def test_the_quick_look_command_in_the_docstring_runs_as_written():
    with open(os.path.join(ROOT, "examples", "train_cifar10.py")) as f:
        line = next(l for l in f if "# a quick look" in l)
    args = line.split("#")[0].split()[2:]          # after "python examples/train_cifar10.py"
    out = run("train_cifar10.py", "--backend", "numpy", *args)
    assert re.search(r"test accuracy 0\.\d{4}", out)
