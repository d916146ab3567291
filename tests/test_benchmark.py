"""The benchmark script runs and prints its figures (a tiny model; nothing is judged on speed)."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_step_benchmark_prints_its_figures():
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "train_step.py"), "--steps", "1",
           "--rounds", "2", "--warmup", "0", "--batch-size", "4", "--embed-dim", "12", "--depth", "1",
           "--num-heads", "2", "--no-torch", "--memory", "--scaling", "--scaling-batch", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert len(re.findall(r"^round \d: minivit \d+\.\d img/s$", out, re.M)) == 2
    assert re.search(r"minivit \(numpy, \d+ threads?\): +\d+\.\d ms/step +\d+\.\d images/s", out)
    assert re.search(r"peak memory minivit: \d+ MiB", out)
    rows = re.findall(r"^ +(\d+) +(\d+) +(\d+) +\d+\.\d +\d+\.\d+$", out, re.M)
    assert [int(r[2]) for r in rows] == [17, 65, 257, 1025]
