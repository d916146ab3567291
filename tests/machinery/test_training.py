"""The training loop (train.py, run.py): a short run learns, the data it trains and
validates on, the model it keeps without a validation split, progressive resizing's image
sizes, memory that stays flat. (Resuming: test_resume.py; time budgets:
test_time_budget.py; the schedules: test_schedule.py.)"""

import json
import tracemalloc

import numpy as np
import pytest

from minivit import checkpoint as ckpt
from minivit import data, distributed
from minivit.config import TrainConfig
from minivit.engine.backend import to_host
from minivit.fast import FastRunner
from minivit.run import start_run
from minivit.train import train

from helpers import TINY, quiet, read_metrics, watch_the_check


def test_short_run_on_the_shipped_sample_beats_chance(tmp_path):
    cfg = TrainConfig.from_preset("sample", epochs=5, embed_dim=32, depth=2, num_heads=2, lr=3e-3)
    summary = train(cfg, out=tmp_path / "run", progress=False, plots=False, log=quiet)
    assert summary["data"] == "sample" and summary["test_images"] == 500
    assert summary["test_acc"] >= 0.17, summary        # chance is 0.10 (std 0.013 on 500)
    metrics = read_metrics(tmp_path / "run")
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4, 5]
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["test_acc"] == summary["test_acc"] and len(saved["per_class_acc"]) == 10


def test_training_sees_exactly_the_training_split_and_validation_the_rest(tmp_path):
    """The images a run trains on and the ones it validates on are disjoint and together
    the training images it was given (limit_train of them), labels alongside; none is a
    test image."""
    cfg = TrainConfig.from_preset("sample", val_fraction=0.2, **TINY)          # 256 images
    run = start_run(cfg, None, tmp_path / "run", distributed.World(), log=quiet, progress=False)
    d = data.load_cifar10(data.SAMPLE_FOLDER)

    def rows(x):
        return [r.tobytes() for r in to_host(x)]
    given, train_rows, val_rows = rows(d["x_train"][:256]), rows(run.train_loader.x), rows(run.val_loader.x)
    assert len(set(given)) == 256                                 # no image twice in the sample
    assert not set(train_rows) & set(val_rows)
    assert sorted(train_rows + val_rows) == sorted(given)
    assert len(val_rows) == pytest.approx(0.2 * 256, abs=5)
    label = dict(zip(given, d["y_train"][:256].tolist()))
    assert [label[r] for r in train_rows] == to_host(run.train_loader.y).tolist()
    assert [label[r] for r in val_rows] == to_host(run.val_loader.y).tolist()
    assert not set(rows(d["x_test"])) & set(given)


def test_without_a_validation_split_the_last_weights_are_the_model(tmp_path):
    cfg = TrainConfig.from_preset("sample", epochs=2, val_fraction=0.0, **TINY)
    logs = []
    summary = train(cfg, out=tmp_path / "run", progress=False, plots=False, log=logs.append)
    assert summary["model"] == "final.npz" and summary["epoch"] == 2
    assert not (tmp_path / "run" / "best.npz").exists()
    assert any("no validation" in line for line in logs)
    final = ckpt.load(tmp_path / "run" / "final.npz")[0]
    last = ckpt.load(tmp_path / "run" / "checkpoint.npz")[0]
    for k in final:
        np.testing.assert_array_equal(final[k], last[k])


def test_the_averaged_weights_are_the_ones_evaluated_and_kept(tmp_path):
    """With --ema the validation scores the weight average, so best.npz holds it (not the
    live weights)."""
    cfg = TrainConfig.from_preset("sample", epochs=1, ema=0.99, **TINY)
    train(cfg, out=tmp_path / "run", progress=False, plots=False, log=quiet)
    best = ckpt.load(tmp_path / "run" / "best.npz")[0]                 # epoch 1: always the best
    last_w, last_opt, meta = ckpt.load(tmp_path / "run" / "checkpoint.npz")
    assert meta["ema"]["t"] == meta["step"]
    flat = np.concatenate([v.ravel() for v in best.values()])
    np.testing.assert_array_equal(flat, last_opt["ema.shadow"])       # evaluated: the average
    assert not np.array_equal(flat, np.concatenate([v.ravel() for v in last_w.values()]))


def test_progressive_resizing_trains_the_first_share_on_smaller_images(tmp_path, backend, monkeypatch):
    sizes, forward = [], FastRunner.forward
    checking = watch_the_check(monkeypatch)

    def spy(self, x, keep_cache=True, draws=None):
        if keep_cache and not checking:               # training steps, not evaluation or the check
            sizes.append(x.shape[-1])
        return forward(self, x, keep_cache, draws)

    monkeypatch.setattr(FastRunner, "forward", spy)
    logs = []
    cfg = TrainConfig.from_preset("sample", epochs=4, low_res=0.5, low_res_size=16, **TINY)
    summary = train(cfg, out=tmp_path / "run", progress=False, plots=False, log=logs.append,
                    backend=backend)
    half = len(sizes) // 2                            # 4 epochs: the first 2 on small images
    assert len(sizes) == 4 * read_metrics(tmp_path / "run")[0]["step"] and sizes == [16] * half + [32] * half
    assert "Progressive resizing: the first 50% of training on 16x16 images, then 32x32." in logs
    assert summary["test_images"] == 500              # evaluated at full resolution
    sizes.clear()
    cfg = TrainConfig.from_preset("sample", epochs=4, low_res=0.25, mid_res=0.5, mid_res_size=24, **TINY)
    train(cfg, out=tmp_path / "three", progress=False, plots=False, log=logs.append, backend=backend)
    quarter = len(sizes) // 4                         # 16px, 24px for two epochs, 32px
    assert sizes == [16] * quarter + [24] * 2 * quarter + [32] * quarter
    assert "Progressive resizing: the first 25% of training on 16x16 images, 24x24 to 75%, then 32x32." in logs


def test_memory_stays_flat_over_epochs(tmp_path):
    cfg = TrainConfig.from_preset("sample", epochs=8, **TINY)
    sizes = []
    tracemalloc.start()
    try:
        train(cfg, out=tmp_path / "run", progress=False, plots=False, log=quiet,
              on_epoch=lambda record: sizes.append(tracemalloc.get_traced_memory()[0]))
    finally:
        tracemalloc.stop()
    growth = sizes[-1] - sizes[2]
    assert growth < 1_000_000, f"traced memory grew by {growth} bytes from epoch 3 to 8: {sizes}"
