"""kill -9 at any moment of a run (a training step, validation, every stage of a save) on NumPy, the CuPy stand-in and either rank of an MPI job: every file
stays whole, metrics.jsonl is never behind the checkpoint, and --resume, killed again and
again, ends with the uninterrupted run's weights, bit for bit. The machinery:
benchmarks/fault_injection.py, whose own figures are checked last."""

import subprocess
import sys

import numpy as np
import pytest

import fault_injection as fi
from minivit import checkpoint as ckpt
from minivit.files import read_jsonl

import helpers
from helpers import FAULT_ARGS

# every kind of moment a kill must be survived at
MOMENTS = {"step: forward", "step: backward", "evaluation: forward", "save: temporary file written",
           "save: before the rename", "save: after the rename"}


class Planned:
    """A stand-in for kill_chain's generator: the kill points given, in order."""

    def __init__(self, points):
        self.points = list(points)

    def integers(self, low, high):
        return self.points.pop(0)


@pytest.fixture
def metrics_never_behind(monkeypatch):
    """After every kill, besides the files being whole: metrics.jsonl holds epochs 1..n, one
    whole line each, and the checkpoint is at epoch n or n - 1 (an epoch's line is written
    just before its checkpoint), never ahead of them."""
    whole = fi.damaged_files

    def checked(folder):
        bad = whole(folder)
        if not bad and (folder / "checkpoint.npz").exists():
            epochs = [m["epoch"] for m in read_jsonl(folder / "metrics.jsonl")]
            saved = ckpt.load(folder / "checkpoint.npz")[2]["epoch"]
            if epochs != list(range(1, len(epochs) + 1)) or not len(epochs) - 1 <= saved <= len(epochs):
                bad.append(("metrics.jsonl", f"epochs {epochs} beside a checkpoint of epoch {saved}"))
        return bad
    monkeypatch.setattr(fi, "damaged_files", checked)


def test_kill_9_at_30_seeded_moments_then_resume_is_bit_for_bit(straight, tmp_path, metrics_never_behind):
    rng = np.random.default_rng(21)
    kills, span, chains = [], len(straight[1]) // 2, 0
    while len(kills) < 30:                   # runs of up to 10 kills, each resumed to its end
        out = tmp_path / f"chain-{chains}"
        c = fi.kill_chain(out, rng, min(10, 30 - len(kills)), span, args=FAULT_ARGS)
        assert c["code"] == 0, c["stderr"]
        assert c["damaged"] == [], c["damaged"]
        assert fi.differences(straight[0], out) == []
        kills += c["kills"]
        chains += 1
    assert chains <= 5
    # each kind of moment the seeded points missed: one kill there, resumed to the end
    for kind in sorted(MOMENTS - {k.split(",")[0] for k in kills}):
        at = next(i for i, e in enumerate(straight[1], 1) if e.split(",")[0] == kind)
        out = tmp_path / f"at-{at}"
        c = fi.kill_chain(out, Planned([at]), 1, span, args=FAULT_ARGS)
        assert c["kills"] == [straight[1][at - 1]] and c["code"] == 0, c
        assert c["damaged"] == [] and fi.differences(straight[0], out) == []
        kills += c["kills"]
    assert {k.split(",")[0] for k in kills} == MOMENTS


def test_kill_9_on_the_cupy_stand_in(tmp_path, metrics_never_behind):
    args = [*FAULT_ARGS, "--backend", "cupy"]
    straight = fi.run_child([*args, "--out", str(tmp_path / "straight")], FAULT_CUPY_STRICT=1)
    assert straight.returncode == 0, straight.stderr
    c = fi.kill_chain(tmp_path / "run", np.random.default_rng(3), 3, fi.events_of(straight) // 2,
                      args=args, FAULT_CUPY_STRICT=1)
    assert c["code"] == 0 and len(c["kills"]) == 3, c
    assert c["damaged"] == [] and "on cupy" in fi.run_child(
        ["--resume", "--out", str(tmp_path / "run"), "--backend", "cupy", "--no-plots"],
        FAULT_CUPY_STRICT=1).stdout
    assert fi.differences(tmp_path / "straight", tmp_path / "run") == []


def test_kill_9_of_either_rank_of_a_two_rank_run(tmp_path, metrics_never_behind):
    if helpers.MPIRUN is None:
        pytest.skip(helpers.MPI_MISSING)
    straight = fi.run_child([*FAULT_ARGS, "--out", str(tmp_path / "straight")], mpirun=helpers.MPIRUN)
    assert straight.returncode == 0, straight.stderr
    rng = np.random.default_rng(5)
    for rank, span in ((0, 30), (1, 14)):            # rank 1 writes nothing: fewer events
        out = tmp_path / f"rank{rank}"
        c = fi.kill_chain(out, rng, 2, span, args=FAULT_ARGS, mpirun=helpers.MPIRUN, FAULT_RANK=rank)
        assert c["code"] == 0 and len(c["kills"]) == 2, c
        assert c["damaged"] == []
        assert fi.differences(tmp_path / "straight", out) == []


def test_the_fault_injection_script_prints_its_figures():
    proc = subprocess.run([sys.executable, str(fi.ROOT / "benchmarks" / "fault_injection.py"), "--kills",
                           "2", "--writes", "5"], capture_output=True, text=True, timeout=300,
                          env=fi.child_env())
    assert proc.returncode == 0, proc.stderr
    assert "full disk: 5 writes failed (" in proc.stdout and "files lost or damaged: 0" in proc.stdout
    assert "kill -9: 2 kills in 1 runs (" in proc.stdout and "files damaged: 0" in proc.stdout
