"""--time-budget: a run trains for that much training time (the clock of train(clock=...),
here one that moves a fixed amount a step, so no figure depends on the machine's speed),
decays its rate to the end, counts only training time across --resume, and on a GPU starts
the clock after the first step, which compiles the kernels. (The rate and image size the
clock gives: test_schedule.py.)"""

import re

import pytest

from minivit.config import TrainConfig
from minivit.fast import FastRunner
from minivit.schedule import lr_at
from minivit.train import train

from helpers import TINY, StepClock, quiet, read_metrics, same_checkpoints, watch_the_check

STEP = 0.125          # seconds a training step takes on the test's clock (exact in binary)


def test_a_time_budget_ends_on_time_with_the_rate_decayed_and_resumes(tmp_path, backend):
    """3 s of 0.125-s steps: 24 steps, 3 epochs of 7 and 3 steps of a 4th; the budget ends
    the run before step 25."""
    cfg = TrainConfig.from_preset("sample", time_budget=3.0, warmup_fraction=0.1, schedule="linear",
                                  min_lr=0.0, **TINY)
    kw = dict(progress=False, plots=False, log=quiet, backend=backend)
    clock = StepClock(STEP)
    summary = train(cfg, out=tmp_path / "run", clock=clock, on_step=clock.step, **kw)
    metrics = read_metrics(tmp_path / "run")
    assert [(m["epoch"], m["step"]) for m in metrics] == [(1, 7), (2, 14), (3, 21), (4, 24)]
    assert [m["epoch_seconds"] for m in metrics] == [0.875, 0.875, 0.875, 0.375]
    assert metrics[-1]["train_seconds"] == 3.0 and clock() == 3.0     # on time, to the step
    assert metrics[-1]["lr"] == lr_at(cfg, 23, 7, elapsed=23 * STEP) <= 0.05 * cfg.lr   # decayed to the end
    assert summary["model"] == "final.npz" and summary["train_seconds"] == 3.0
    assert summary["images_per_second"] == pytest.approx(24 * 32 / 3.0)
    assert summary["gemm_gflops"] > 0                                 # the machine's speed, recorded
    # interrupted after its first epoch and resumed: the budget counts training time only
    clock = StepClock(STEP)
    train(cfg, out=tmp_path / "cut", stop_after_epochs=1, clock=clock, on_step=clock.step, **kw)
    assert read_metrics(tmp_path / "cut")[-1]["train_seconds"] == 0.875
    clock = StepClock(STEP)
    clock.t = 1000.0                                   # a new process: its clock starts anywhere
    train(None, out=tmp_path / "cut", resume=True, clock=clock, on_step=clock.step, **kw)
    resumed = read_metrics(tmp_path / "cut")
    assert [(m["epoch"], m["step"], m["train_seconds"]) for m in resumed] == \
        [(m["epoch"], m["step"], m["train_seconds"]) for m in metrics]
    same_checkpoints(tmp_path / "run" / "checkpoint.npz", tmp_path / "cut" / "checkpoint.npz")
    # resumed once more, its budget spent: it says so and trains nothing (no phantom epoch)
    said, clock = [], StepClock(STEP)
    train(None, out=tmp_path / "cut", resume=True, clock=clock, on_step=clock.step,
          **{**kw, "log": said.append})
    assert any(line.startswith("The run had already finished (its time budget spent)") for line in said)
    assert read_metrics(tmp_path / "cut") == resumed and clock() == 0.0


def test_on_a_gpu_the_time_budget_clock_starts_after_the_compiling_first_step(tmp_path, cupy_strict_module,
                                                                             monkeypatch):
    """The first step on a GPU compiles the kernels: a 2-second first step does not eat a
    1.5-second budget, and the log says so."""
    forward, calls = FastRunner.forward, []
    clock = StepClock(STEP)
    checking = watch_the_check(monkeypatch)

    def compiling(self, x, keep_cache=True, draws=None):
        if keep_cache and not checking:                   # a training step's forward
            calls.append(1)
            if len(calls) == 1:
                clock.t += 2.0                            # the stand-in does not compile: pretend
        return forward(self, x, keep_cache, draws)
    monkeypatch.setattr(FastRunner, "forward", compiling)
    logs = []
    cfg = TrainConfig.from_preset("sample", time_budget=1.5, **TINY)
    train(cfg, out=tmp_path / "run", progress=False, plots=False, log=logs.append, backend="cupy",
          clock=clock, on_step=clock.step)
    text = "\n".join(logs)
    assert "Time budget: the clock starts after the first step, which compiles the GPU kernels" in text
    assert re.search(r"First step: 2\.0 s \(it compiled the GPU kernels\), not counted", text), text
    last = read_metrics(tmp_path / "run")[-1]
    assert last["step"] == 12 and last["train_seconds"] == 1.5     # 12 steps of 0.125 s, the 2 s aside
