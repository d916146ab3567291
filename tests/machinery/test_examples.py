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


FINAL = r"final loss (\d+\.\d+)  batch accuracy (\d\.\d{3})"
CHECK = r"   (layer \w+|a small ViT), {}: +{} +\d+ of \d+ tensors wrong, worst rel err (\S+) "


def test_overfit_one_batch_shows_a_planted_bug_overfits_and_the_gradient_check_catches_it():
    """The example's claims, as it prints them: the correct backward memorizes the batch;
    with LayerNorm's mean term dropped the batch is memorized all the same (overfitting
    does not prove gradients right); the gradient check passes the correct backward
    (relative errors below 1e-7) and fails the planted bug (relative errors far above)."""
    out = run("overfit_one_batch.py", "--steps", "40", "--batch", "16")
    (correct_loss, correct_acc), (bug_loss, bug_acc) = [tuple(map(float, m)) for m in re.findall(FINAL, out)]
    assert correct_loss < 1.0 and correct_acc == 1.0, out      # from ln 10 = 2.30
    assert bug_loss < 1.0 and bug_acc == 1.0, out              # the bug overfits too
    assert bug_loss != correct_loss, out                       # (the bug was in the training)
    assert "with the bug the batch is still memorized" in out
    passed = re.findall(CHECK.format("correct backward", "pass"), out)
    failed = re.findall(CHECK.format("planted bug", "FAIL"), out)
    assert [name for name, _ in passed] == [name for name, _ in failed] == ["layer layernorm", "a small ViT"], out
    assert all(float(err) < 1e-7 for _, err in passed) and all(float(err) > 1e-2 for _, err in failed), out
    assert "-> the gradient check passes the correct backward and catches the bug" in out


def test_overfit_one_batch_plants_the_gelu_bug_too():
    """--plant-bug gelu reaches the model and the checks (one step: the checks alone matter)."""
    out = run("overfit_one_batch.py", "--steps", "1", "--batch", "4", "--plant-bug", "gelu")
    assert "without its x phi(x) term" in out
    assert [n for n, _ in re.findall(CHECK.format("planted bug", "FAIL"), out)] == ["layer gelu", "a small ViT"], out
    assert "-> the gradient check passes the correct backward and catches the bug" in out


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
    # the cross-entropy shown is the one checked: the model's 2 x 3 logits, 6 elements
    loss = out.split("== cross-entropy")[1].split("\n== ")[0]
    assert "logits     (2, 3)" in loss and "over 6 elements" in loss, loss
    assert "the block is the pieces above, x1 + mlp(norm2(x1)): True" in out
