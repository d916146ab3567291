"""--resume: a run stopped between epochs, or inside one by a checkpoint on the clock,
continues to exactly the weights, optimizer state, weight average and metrics of a run
never stopped; from Python and from the command line, the latest run when no --out is
given. (Stops by a signal: test_interrupts.py; by kill -9: test_kill.py.)"""

import numpy as np
import pytest

from minivit import checkpoint as ckpt
from minivit import cli
from minivit.config import TrainConfig
from minivit.train import train

from helpers import TINY, StepClock, quiet, read_metrics, same_checkpoints, untimed_metrics

# every regularizer and the weight average, drawn from the run's seeded streams
REGULARIZED = dict(TINY, depth=2, drop_path=0.2, mixup=0.8, cutmix=1.0, random_erase=0.25,
                   randaugment=2, ema=0.99)


def test_a_run_stopped_between_epochs_resumes_to_the_same_weights(tmp_path, backend):
    cfg = TrainConfig.from_preset("sample", epochs=3, **REGULARIZED)
    kw = dict(progress=False, plots=False, log=quiet, backend=backend)
    summary = train(cfg, out=tmp_path / "straight", **kw)
    assert summary["backend"] == backend and summary["test_images"] == 500
    assert train(cfg, out=tmp_path / "halted", stop_after_epochs=2, **kw) is None
    meta = ckpt.load(tmp_path / "halted" / "checkpoint.npz")[2]
    assert meta["epoch"] == 2 and not (tmp_path / "halted" / "summary.json").exists()
    resumed = train(None, out=tmp_path / "halted", resume=True, **kw)
    same_checkpoints(tmp_path / "straight" / "checkpoint.npz", tmp_path / "halted" / "checkpoint.npz")
    a, b = (ckpt.load(tmp_path / run / "checkpoint.npz")[2] for run in ("straight", "halted"))
    assert a["step"] == b["step"] and b["in_epoch"] is None and b["ema"]["t"] == b["step"]
    assert untimed_metrics(tmp_path / "straight") == untimed_metrics(tmp_path / "halted")
    assert len(read_metrics(tmp_path / "halted")) == 3
    assert resumed["test_acc"] == summary["test_acc"]


def test_resume_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = TrainConfig.from_preset("sample", epochs=2, **TINY)
    train(cfg, out=out, progress=False, plots=False, log=quiet, stop_after_epochs=1)
    assert not (out / "summary.json").exists()
    assert cli.main(["train", "--resume", "--out", str(out), "--epochs", "5", "--no-progress",
                     "--no-plots"]) == 0
    said = capsys.readouterr()
    assert "Resuming" in said.out and "epoch   2" in said.out and "epoch   1" not in said.out
    assert "note: --resume continues with the run's saved configuration; ignoring --epochs" in said.err
    assert [m["epoch"] for m in read_metrics(out)] == [1, 2] and (out / "summary.json").exists()
    assert "already finished" not in said.out
    assert cli.main(["train", "--resume", "--out", str(out), "--no-progress", "--no-plots"]) == 0
    said = capsys.readouterr().out                  # finished: it says so, and trains nothing
    assert (f"The run had already finished (epoch 2 of 2): nothing left to train; it is scored again. "
            f"To train it further, start a new run from it: minivit train --init-from {out / 'final.npz'}") in said
    assert [m["epoch"] for m in read_metrics(out)] == [1, 2]


def test_resume_without_out_continues_the_latest_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig.from_preset("sample", epochs=2, **TINY)
    train(cfg, out=tmp_path / "runs" / "older", progress=False, plots=False, log=quiet)
    train(cfg, out=tmp_path / "runs" / "newer", stop_after_epochs=1, progress=False, plots=False, log=quiet)
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--no-progress", "--no-plots"]) == 0
    assert "Resuming the latest run: runs/newer" in capsys.readouterr().out
    assert [m["epoch"] for m in read_metrics(tmp_path / "runs" / "newer")] == [1, 2]


def test_a_checkpoint_on_the_clock_inside_an_epoch_resumes_exactly(tmp_path, backend):
    """checkpoint_minutes: inside an epoch the run saves when that long has passed at a look
    at the device (every 10 steps). The clock here moves 10 s a step, so with 1 minute the
    saves come at steps 10 and 20 of the 22 an epoch; the process dies at step 15 and
    --resume continues from step 10 to the uninterrupted run's weights."""
    cfg = TrainConfig.from_preset("sample", epochs=1, checkpoint_minutes=1.0,
                                  **dict(TINY, limit_train=800))     # 720 images: 22 steps of 32
    kw = dict(progress=False, plots=False, log=quiet, backend=backend)
    clock = StepClock(per_step=10.0)
    train(cfg, out=tmp_path / "straight", clock=clock, on_step=clock.step, **kw)

    def crash(step):
        clock.step()
        if step == 15:
            raise RuntimeError("the machine went away")
    clock = StepClock(per_step=10.0)
    with pytest.raises(RuntimeError, match="the machine went away"):
        train(cfg, out=tmp_path / "cut", clock=clock, on_step=crash, **kw)
    meta = ckpt.load(tmp_path / "cut" / "checkpoint.npz")[2]
    assert meta["step"] == 10 and meta["in_epoch"]["batch"] == 10 and meta["epoch"] == 0
    assert meta["in_epoch"]["seconds"] == 100.0                       # ten steps of the clock
    train(None, out=tmp_path / "cut", resume=True, **kw)
    same_checkpoints(tmp_path / "straight" / "checkpoint.npz", tmp_path / "cut" / "checkpoint.npz")
    assert untimed_metrics(tmp_path / "straight") == untimed_metrics(tmp_path / "cut")

    # with checkpoint_minutes 0 only the epoch's end saves; an hour-long step changes nothing
    cfg0 = TrainConfig.from_preset("sample", epochs=1, checkpoint_minutes=0, **dict(TINY, limit_train=800))
    clock = StepClock(per_step=3600.0)
    with pytest.raises(RuntimeError):
        train(cfg0, out=tmp_path / "none", clock=clock, on_step=crash, **kw)
    assert not (tmp_path / "none" / "checkpoint.npz").exists()
    assert np.isclose(clock(), 15 * 3600.0)
