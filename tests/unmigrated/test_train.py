"""Training: a short real run, checkpoints, exact resume, evaluation helpers."""

import dataclasses
import json
import re
import time

import numpy as np
import pytest

import minivit
from minivit import checkpoint as ckpt
from minivit.config import TrainConfig
from minivit.errors import MinivitError
from minivit.evaluate import confusion_matrix, per_class_accuracy
from minivit.files import read_jsonl
from minivit.train import decay_groups, train


def read_metrics(run_dir):
    return read_jsonl(run_dir / "metrics.jsonl")

TINY = dict(embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0, batch_size=32, limit_train=256,
            eval_batch_size=128)


def quiet(*args):
    pass


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


def test_resume_after_interruption_gives_the_same_weights(tmp_path, backend):
    cfg = TrainConfig.from_preset("sample", epochs=3, **TINY)
    kw = dict(progress=False, plots=False, log=quiet, backend=backend)
    summary = train(cfg, out=tmp_path / "straight", **kw)
    assert summary["backend"] == backend and summary["test_images"] == 500
    stopped = train(cfg, out=tmp_path / "halted", stop_after_epochs=2, **kw)
    assert stopped is None
    assert ckpt.load(tmp_path / "halted" / "checkpoint.npz")[2]["epoch"] == 2
    train(None, out=tmp_path / "halted", resume=True, **kw)
    a, optim_a, meta_a = ckpt.load(tmp_path / "straight" / "checkpoint.npz")
    b, optim_b, meta_b = ckpt.load(tmp_path / "halted" / "checkpoint.npz")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    for k in optim_a:
        np.testing.assert_array_equal(optim_a[k], optim_b[k], err_msg=k)
    assert meta_a["step"] == meta_b["step"] and meta_b["in_epoch"] is None
    untimed = [[{k: v for k, v in m.items() if k not in ("epoch_seconds", "images_per_second", "train_seconds")}
                for m in read_metrics(tmp_path / run)] for run in ("straight", "halted")]
    assert untimed[0] == untimed[1] and len(untimed[0]) == 3


def test_a_finished_run_is_not_overwritten(tmp_path):
    cfg = TrainConfig.from_preset("sample", epochs=1, **TINY)
    train(cfg, out=tmp_path / "run", progress=False, plots=False, log=quiet)
    with pytest.raises(MinivitError, match="already holds a run .*pass --resume"):
        train(cfg, out=tmp_path / "run", progress=False, plots=False, log=quiet)
    with pytest.raises(MinivitError, match="--resume: no checkpoint at"):
        train(None, out=tmp_path / "other", resume=True, log=quiet)


def test_checkpoint_round_trip_and_torch_names(tmp_path, backend):
    model = minivit.ViT(embed_dim=24, depth=2, num_heads=3, seed=5, backend=backend)
    opt = minivit.AdamW(model.parameters(), lr=1e-3)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32))
    model.backward(minivit.cross_entropy(model.forward(x), [0, 1, 2, 3])[1])
    opt.step()
    ckpt.save(tmp_path / "c.npz", model, {"epoch": 7}, optimizer=opt)
    loaded, meta = ckpt.load_model(tmp_path / "c.npz", backend=backend)
    assert meta["epoch"] == 7 and meta["optimizer"]["t"] == 1 and loaded.backend == backend
    np.testing.assert_array_equal(minivit.to_host(loaded.forward(x)), minivit.to_host(model.forward(x)))
    weights, optim, _ = ckpt.load(tmp_path / "c.npz")
    assert list(weights) == list(model.state_dict())          # PyTorch names, nothing else
    assert "m.head.weight" in optim
    with np.load(tmp_path / "c.npz", allow_pickle=False) as f:   # loads without pickle
        assert f["blocks.1.attn.in_proj_weight"].shape == (72, 24)


def test_bad_checkpoints_give_clear_errors(tmp_path):
    model = minivit.ViT(embed_dim=24, depth=1, num_heads=3)
    ckpt.save(tmp_path / "good.npz", model, {})
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[:len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="is truncated or damaged"):
        ckpt.load(tmp_path / "cut.npz")
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    with pytest.raises(ckpt.CheckpointError, match="is not a minivit checkpoint"):
        ckpt.load(tmp_path / "foreign.npz")
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load(tmp_path / "absent.npz")


def test_weights_load_into_the_pytorch_simplevit(tmp_path):
    torch = pytest.importorskip("torch")
    from torch_simplevit import SimpleViT
    model = minivit.ViT(embed_dim=24, depth=2, num_heads=3, seed=2)
    ckpt.save(tmp_path / "w.npz", model, {})
    ref = SimpleViT(embed_dim=24, depth=2, num_heads=3)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in ckpt.load_weights(tmp_path / "w.npz").items()})
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(ref(torch.from_numpy(x)).detach().numpy(), model.forward(x),
                               rtol=1e-4, atol=1e-5)


def test_weight_decay_only_on_weight_matrices():
    groups = decay_groups(minivit.ViT(embed_dim=24, depth=1, num_heads=3), 0.05)
    decay = {p.name for p in groups[0]["params"]}
    assert "blocks.0.attn.in_proj_weight" in decay and "patch_embed.proj.weight" in decay
    assert not decay & {"vit_embed.pos_embed", "vit_embed.cls_token", "blocks.0.norm1.weight",
                        "head.bias"}
    assert groups[1]["weight_decay"] == 0.0


def test_accuracy_helpers():
    y, p = np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0])
    assert per_class_accuracy(y, p, 3) == [0.5, 1.0, pytest.approx(2 / 3)]
    np.testing.assert_array_equal(confusion_matrix(y, p, 3), [[1, 1, 0], [0, 1, 0], [1, 0, 2]])


def _tta_case(backend):
    """A tiny float64 model with random weights (so that views matter) and its loader."""
    from minivit.data import Loader
    from conftest import tiny_config
    model = minivit.ViT(**tiny_config(num_classes=10), dtype="float64", backend=backend)
    rng = np.random.default_rng(0)
    model.flat_params[...] = model.xp.asarray(rng.normal(0.0, 0.5, model.flat_params.shape))
    x = rng.integers(0, 256, (12, 3, 8, 8)).astype(np.uint8)
    y = rng.integers(0, 10, 12)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.3, 0.25]
    return model, x, y, mean, std, Loader(x, y, 5, model.xp, mean, std, dtype="float64")


def test_flip_averages_the_logits_of_each_image_and_its_mirror_image(backend):
    """evaluate(views="flip"): the logits are the mean of the model's on x and on x mirrored
    left-right; loss, accuracy and predictions follow from them."""
    from minivit.data import normalize
    from minivit.evaluate import evaluate
    model, x, y, mean, std, loader = _tta_case(backend)
    loss, acc, preds = evaluate(model, loader, views="flip")
    images = normalize(model.xp.asarray(x), mean, std, "float64")
    logits = minivit.to_host(0.5 * (model.forward(images) + model.forward(images[..., ::-1])))
    assert loss == pytest.approx(float(minivit.cross_entropy(logits, y)[0]), rel=1e-12)
    np.testing.assert_array_equal(preds, logits.argmax(axis=1))
    assert acc == pytest.approx(float((logits.argmax(axis=1) == y).mean()))
    assert abs(evaluate(model, loader)[0] - loss) > 1e-3          # the mirror images count


def test_crops_weight_six_views_as_airbench(backend):
    """evaluate(views="crops"): the image and its mirror image weigh 1/4 each; the two copies
    shifted CROP_SHIFT (2) pixels along the diagonal (edges reflected: row -1 reads row 1,
    row H reads row H-2) and their mirror images 1/8 each. The shifts are built here by
    indexing."""
    from minivit.data import normalize
    from minivit.evaluate import CROP_SHIFT as s, evaluate
    model, x, y, mean, std, loader = _tta_case(backend)
    H = x.shape[-1]
    down = np.abs(np.arange(H) - s)                       # view row i shows row i - s
    up = (H - 1) - np.abs(np.arange(H) - (H - 1 - s))     # view row i shows row i + s
    assert s == 2 and list(down[:4]) == [2, 1, 0, 1] and list(up[-4:]) == [H - 2, H - 1, H - 2, H - 3]
    views = [(x, 0.25)] + [(x[..., idx[:, None], idx[None, :]], 0.125) for idx in (down, up)]
    logits = 0
    for view, weight in views:
        images = normalize(model.xp.asarray(np.ascontiguousarray(view)), mean, std, "float64")
        for v in (images, images[..., ::-1]):
            logits = logits + weight * minivit.to_host(model.forward(v))
    loss, acc, preds = evaluate(model, loader, views="crops")
    assert loss == pytest.approx(float(minivit.cross_entropy(logits, y)[0]), rel=1e-12)
    np.testing.assert_array_equal(preds, logits.argmax(axis=1))
    assert acc == pytest.approx(float((logits.argmax(axis=1) == y).mean()))
    assert abs(evaluate(model, loader, views="flip")[0] - loss) > 1e-3   # the shifts count
    with pytest.raises(ValueError, match="choose one of one, flip, crops"):
        evaluate(model, loader, views="five")


def test_every_view_set_at_once_runs_each_forward_pass_once(backend):
    """evaluate_views: for every view set, exactly what evaluate gives for it alone, from
    six forward passes a batch (the crops' views hold the flip pair's, which hold the image's)
    where one at a time takes 1 + 2 + 6."""
    from minivit.evaluate import VIEWS, evaluate, evaluate_views
    model, x, y, mean, std, loader = _tta_case(backend)

    class Counting:                                   # the model, counting its forward passes
        passes = 0

        def forward(self, x, **kw):
            self.passes += 1
            return model.forward(x, **kw)

    counting = Counting()
    scores = evaluate_views(counting, loader, views=VIEWS)
    batches = len(range(0, len(y), 5))
    assert list(scores) == list(VIEWS) and counting.passes == 6 * batches
    for v in VIEWS:
        loss, acc, preds = evaluate(model, loader, views=v)
        assert scores[v][0] == loss and scores[v][1] == acc
        np.testing.assert_array_equal(scores[v][2], preds)
    counting.passes = 0
    evaluate_views(counting, loader, views=("one", "flip"))
    assert counting.passes == 2 * batches


@pytest.mark.parametrize("over, message", [
    (dict(epochs=0), "epochs must be a positive integer, got 0"), (dict(lr=-1.0), "lr must be a positive number"),
    (dict(optimizer="sgd"), "unknown optimizer 'sgd'"), (dict(patch_size=5), "patch_size 5"),
    (dict(dtype="int8"), "unknown dtype 'int8'"), (dict(label_smoothing=1.0), "label_smoothing"),
    (dict(low_res=0.5, low_res_size=10), "low_res_size 10 does not fit the model: it must be at "
     "most img_size 32 and a multiple of 4 .patch_size times the stem's reduction., e.g. 16"),
    (dict(low_res=0.5, low_res_size=64), "low_res_size 64 does not fit"),
    (dict(mid_res=0.3, mid_res_size=22), "mid_res_size 22 does not fit"),
    (dict(low_res=0.5, mid_res=0.5), "low_res 0.5 \\+ mid_res 0.5 leave no training on full-size images"),
    (dict(stem_init="whiten", stem_channels=5), "stem_init whiten needs a stem with an even number"),
])
def test_config_validation(over, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_preset("default", **over).validate()
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        TrainConfig.from_preset("fast")


def test_a_time_budget_ends_on_time_with_the_rate_decayed_and_resumes(tmp_path, backend):
    cfg = TrainConfig.from_preset("sample", time_budget=3.0, warmup_fraction=0.1, schedule="linear",
                                  min_lr=0.0, **TINY)
    kw = dict(progress=False, plots=False, log=quiet, backend=backend)
    summary = train(cfg, out=tmp_path / "run", **kw)
    metrics = read_metrics(tmp_path / "run")
    spent = metrics[-1]["train_seconds"]
    step_time = metrics[0]["epoch_seconds"] / metrics[0]["step"]
    assert 3.0 <= spent <= 3.0 + 2 * step_time + 0.05, (spent, step_time)   # on time, to a step
    assert metrics[-1]["lr"] <= 0.05 * cfg.lr                               # decayed to the end
    assert summary["model"] == "final.npz" and summary["train_seconds"] == pytest.approx(spent, abs=1e-3)
    assert summary["gemm_gflops"] > 0.1 and summary["images_per_second"] > 0     # the machine's speed
    per_epoch = [m["images_per_second"] for m in metrics]
    assert min(per_epoch) <= summary["images_per_second"] <= max(per_epoch)
    # interrupted after its first epoch and resumed: the budget counts training time only
    train(cfg, out=tmp_path / "cut", stop_after_epochs=1, **kw)
    first = read_metrics(tmp_path / "cut")[-1]["train_seconds"]
    assert first < 3.0
    train(None, out=tmp_path / "cut", resume=True, **kw)
    spent = read_metrics(tmp_path / "cut")[-1]["train_seconds"]
    assert 3.0 <= spent <= 3.0 + 2 * step_time + 0.05


def test_on_a_gpu_the_time_budget_clock_starts_after_the_compiling_first_step(tmp_path, cupy_strict_module,
                                                                             monkeypatch):
    """The first step on a GPU compiles the kernels: a 2-second first step does not eat a
    1.5-second budget, and the log says so."""
    from minivit.fast import FastRunner
    forward, calls = FastRunner.forward, []

    def slow_first(self, x, keep_cache=True, rng=None, rows=None):
        calls.append(keep_cache)
        if len(calls) == 1:
            time.sleep(2.0)                       # the stand-in does not compile: pretend
        return forward(self, x, keep_cache, rng, rows)
    monkeypatch.setattr(FastRunner, "forward", slow_first)
    logs = []
    cfg = TrainConfig.from_preset("sample", time_budget=1.5, **TINY)
    train(cfg, out=tmp_path / "run", progress=False, plots=False, log=logs.append, backend="cupy")
    text = "\n".join(logs)
    assert "Time budget: the clock starts after the first step, which compiles the GPU kernels" in text
    assert re.search(r"First step: 2\.\d s \(it compiled the GPU kernels\), not counted", text), text
    last = read_metrics(tmp_path / "run")[-1]
    assert last["step"] > 1 and last["train_seconds"] < 3.0       # the 2 s first step is not in it


def test_the_learning_rate_follows_the_clock():
    from minivit.schedule import lr_at
    cfg = TrainConfig.from_preset("default", time_budget=100.0, warmup_fraction=0.1, lr=1.0, min_lr=0.0)
    assert lr_at(cfg, 0, 10, elapsed=5.0) == pytest.approx(0.5)          # half way up the warmup
    assert lr_at(cfg, 0, 10, elapsed=10.0) == pytest.approx(1.0)
    assert lr_at(cfg, 0, 10, elapsed=55.0) == pytest.approx(0.5)         # cosine half way down
    assert lr_at(cfg, 0, 10, elapsed=100.0) == pytest.approx(0.0, abs=1e-12)
    linear = TrainConfig.from_preset("default", time_budget=100.0, warmup_fraction=0.0,
                                     schedule="linear", lr=1.0, min_lr=0.0)
    assert lr_at(linear, 0, 10, elapsed=25.0) == pytest.approx(0.75)


def test_the_learning_rate_follows_the_steps_without_a_time_budget():
    """By epochs: warmup_epochs of linear warmup to the peak, then each schedule's decay
    reaching min_lr at the last step (10 steps an epoch here)."""
    import math
    from minivit.schedule import lr_at
    cosine = TrainConfig.from_preset("default", epochs=6, warmup_epochs=2.0, lr=1.0, min_lr=0.0)
    lr = [lr_at(cosine, s, 10) for s in range(60)]
    assert lr[:20] == pytest.approx([(s + 1) / 20 for s in range(20)])   # two epochs up
    assert lr[20] == pytest.approx(1.0) and max(lr) == pytest.approx(1.0)
    assert lr[40] == pytest.approx(0.5)                                  # half way down
    assert lr[59] == pytest.approx(0.5 * (1 + math.cos(math.pi * 39 / 40)))
    assert all(a >= b for a, b in zip(lr[20:], lr[21:]))
    linear = TrainConfig.from_preset("default", epochs=3, warmup_epochs=1.0, schedule="linear",
                                     lr=1.0, min_lr=0.1)
    lr = [lr_at(linear, s, 10) for s in range(30)]
    assert lr[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lr[10] == pytest.approx(1.0) and lr[20] == pytest.approx(0.55) and lr[29] == pytest.approx(0.145)
    constant = TrainConfig.from_preset("default", epochs=3, warmup_epochs=0.5, schedule="constant", lr=1.0)
    assert [lr_at(constant, s, 10) for s in (0, 4, 5, 29)] == pytest.approx([0.2, 1.0, 1.0, 1.0])
    assert lr_at(dataclasses.replace(constant, warmup_epochs=0.0), 0, 10) == 1.0


def test_training_sees_exactly_the_training_split_and_validation_the_rest(tmp_path):
    """The images a run trains on and the ones it validates on are disjoint and together
    the training images it was given (limit_train of them), labels alongside; none is a
    test image."""
    from minivit import data, distributed
    from minivit.engine.backend import to_host
    from minivit.train import start_run
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


def test_progressive_resizing_trains_the_first_share_on_smaller_images(tmp_path, backend, monkeypatch):
    from minivit.fast import FastRunner
    from minivit.schedule import image_size_at
    clock = TrainConfig.from_preset("hybrid", time_budget=100.0, low_res=0.4, low_res_size=16, mid_res=0.0)
    assert [image_size_at(clock, 0, 10, elapsed=t) for t in (0.0, 39.9, 40.0, 99.0)] == [16, 16, 32, 32]
    steps = TrainConfig.from_preset("hybrid", epochs=5, low_res=0.4, low_res_size=16, mid_res=0.0)
    assert [image_size_at(steps, s, 10) for s in (0, 19, 20, 49)] == [16, 16, 32, 32]
    assert image_size_at(TrainConfig.from_preset("default"), 0, 10) == 32          # off
    three = TrainConfig.from_preset("hybrid", time_budget=100.0)          # 40% 16px, 30% 24px
    assert [image_size_at(three, 0, 10, elapsed=t) for t in (0.0, 39.9, 40.0, 69.9, 70.0, 99.0, 101.0)] \
        == [16, 16, 24, 24, 32, 32, 32]
    sizes = []
    forward = FastRunner.forward

    def spy(self, x, keep_cache=True, rng=None, rows=None):
        if keep_cache:                                # training steps, not evaluation
            sizes.append(x.shape[-1])
        return forward(self, x, keep_cache, rng, rows)

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
