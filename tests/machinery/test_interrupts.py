"""Ctrl-C and SIGTERM: a run stops after the current step with a checkpoint (inside an
epoch too) and --resume goes on to the uninterrupted run's weights; a signal during a save
never leaves a damaged file, and the command exits with 130 and one line, no traceback.
(A signal to one MPI rank: test_mpi.py.)"""

import os
import signal

import pytest

import fault_injection as fi
from minivit import checkpoint as ckpt
from minivit.config import TrainConfig
from minivit.train import train

from helpers import FAULT_ARGS, TINY, quiet, same_checkpoints, untimed_metrics


def test_ctrl_c_mid_epoch_saves_and_resumes_exactly(tmp_path, backend):
    cfg = TrainConfig.from_preset("sample", epochs=2, **TINY)
    train(cfg, out=tmp_path / "straight", progress=False, plots=False, log=quiet, backend=backend)

    def press_ctrl_c(step):
        if step == 10:                                   # epoch 2, batch 3
            os.kill(os.getpid(), signal.SIGINT)
    logs = []
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out=tmp_path / "cut", progress=False, plots=False, log=logs.append,
              on_step=press_ctrl_c, backend=backend)
    assert any("SIGINT: saved" in m and "epoch 2, batch 3 of 7" in m for m in logs)
    _, _, meta = ckpt.load(tmp_path / "cut" / "checkpoint.npz")
    assert meta["step"] == 10 and meta["in_epoch"]["batch"] == 3
    train(None, out=tmp_path / "cut", resume=True, progress=False, plots=False, log=quiet,
          backend=backend)
    same_checkpoints(tmp_path / "straight" / "checkpoint.npz", tmp_path / "cut" / "checkpoint.npz")
    assert untimed_metrics(tmp_path / "straight") == untimed_metrics(tmp_path / "cut")


@pytest.mark.parametrize("signals, file, nth, code", [
    ("TERM", "checkpoint.npz", 0, 130),       # the save ends, then the run stops cleanly
    ("INT", "best.npz", 0, 130),              # Ctrl-C: the same
    ("INT,INT", "checkpoint.npz", 1, 130),    # a second Ctrl-C cuts the save: the old file stays
    ("TERM", "summary.json", 0, -signal.SIGTERM),   # after training: SIGTERM ends the process
])
def test_a_signal_during_a_save(straight, tmp_path, signals, file, nth, code):
    out = tmp_path / "run"
    at = [i for i, e in enumerate(straight[1], 1) if e == f"save: temporary file written, {file}"][nth]
    proc = fi.run_child([*FAULT_ARGS, "--out", str(out)], FAULT_AT=at, FAULT_SIGNALS=signals)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and fi.damaged_files(out) == []
    if code == 130:
        assert ("minivit train: interrupted; every checkpoint on disk is complete (continue a training "
                "run with: minivit train --resume --out RUN_DIR)") in proc.stderr, proc.stderr
    if "," not in signals and code == 130:        # one signal: the run says where it stopped
        assert f"SIG{signals}: stopped after epoch 1, saved in {out}/checkpoint.npz" in proc.stdout, proc.stdout
    if signals == "INT,INT":
        assert fi.leftovers(out) == [] and ckpt.load(out / "checkpoint.npz")[2]["epoch"] == 1
    proc = fi.run_child(["--resume", "--out", str(out), "--no-plots"])
    assert proc.returncode == 0, proc.stderr
    assert fi.leftovers(out) == [] and fi.differences(straight[0], out) == []
