"""Regularizers for the accuracy recipe: stochastic depth, mixup, cutmix, random erasing
and soft-target cross-entropy. Each has its gradient check or an exact reference."""

import numpy as np
import pytest

import minivit
from minivit import checkpoint as ckpt
from minivit import augment, cli
from minivit.engine import gradcheck
from minivit.config import TrainConfig
from minivit.train import train

from conftest import tiny_config

H = minivit.to_host


def test_model_gradcheck_with_stochastic_depth(backend):
    model = minivit.ViT(**tiny_config(depth=3), dtype="float64", drop_path=0.6, seed=1, backend=backend)
    report = gradcheck.check_model(model, batch_size=4, seed=2, drop_path_seed=3)
    assert report.passed, str(report)
    masks = model.drop_path_masks(4, np.random.default_rng(3))[2]
    assert any(float(m.min()) == 0.0 for m in masks)      # some branch really was dropped


def test_drop_path_masks_and_evaluation(backend):
    model = minivit.ViT(**tiny_config(depth=3), drop_path=0.3, backend=backend)
    assert model.drop_path_masks(8, np.random.default_rng(0))[0] is None   # first block: rate 0
    assert model.drop_path_masks(8, None) == [None] * 3                     # no rng: evaluation
    k1, k2 = (H(k) for k in model.drop_path_masks(20000, np.random.default_rng(0))[2])
    values = np.unique(k1)
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.7, rel=1e-6)
    assert abs(float(k1.mean()) - 1.0) < 0.03                                  # expectation kept
    x = np.random.default_rng(1).standard_normal((4, 3, 8, 8))
    np.testing.assert_array_equal(H(model.forward(x)), H(model.forward(x)))    # deterministic
    assert not np.array_equal(H(model.forward(x)), H(model.forward(x, rng=np.random.default_rng(5))))
    with pytest.raises(ValueError, match=r"drop_path must be in \[0, 1\), got 1.0"):
        minivit.ViT(drop_path=1.0)


def test_soft_target_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 4))
    labels = rng.integers(0, 4, 5)
    onehot = np.eye(4)[labels]
    for eps in (0.0, 0.1):
        hard = minivit.cross_entropy(logits, labels, eps)
        soft = minivit.cross_entropy(logits, onehot, eps)
        assert abs(float(hard[0]) - float(soft[0])) < 1e-12
        np.testing.assert_allclose(hard[1], soft[1], atol=1e-15)
    with pytest.raises(ValueError, match=r"soft targets must have the logits' shape \(5, 4\)"):
        minivit.cross_entropy(logits, np.ones((5, 3)) / 3)


def test_soft_targets_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((6, 10))
    q = rng.random((6, 10))
    q /= q.sum(1, keepdims=True)
    loss, _ = minivit.cross_entropy(logits, q, 0.1)
    ref = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(q),
                                            label_smoothing=0.1)
    assert abs(float(loss) - ref.item()) < 1e-12


def test_mixup_blends_images_and_targets(backend):
    x = np.random.default_rng(0).random((6, 3, 8, 8)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 4, 5])
    xp = minivit.get_xp(backend)
    out, targets = augment.mix_batch(xp.asarray(x), xp.asarray(y), 10, np.random.default_rng(4),
                                     mixup_alpha=0.8)
    out, targets = H(out), H(targets)
    rng = np.random.default_rng(4)                  # the same draws, in the same order
    lam, perm = rng.beta(0.8, 0.8), rng.permutation(6)
    np.testing.assert_allclose(out, lam * x + (1 - lam) * x[perm], rtol=1e-6)
    np.testing.assert_allclose(targets, lam * np.eye(10)[y] + (1 - lam) * np.eye(10)[y[perm]], rtol=1e-6)
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)


def test_cutmix_pastes_one_box_and_weights_targets_by_area(backend):
    x = np.arange(4, dtype=np.float32)[:, None, None, None] * np.ones((4, 3, 16, 16), np.float32)
    y = np.array([0, 1, 2, 3])
    xp = minivit.get_xp(backend)
    out, targets = augment.mix_batch(xp.asarray(x), xp.asarray(y), 4, np.random.default_rng(2),
                                     cutmix_alpha=1.0)
    out, targets = H(out), H(targets)
    pasted = out != x                                # where an image shows its partner
    assert pasted.any()
    area = pasted[:, 0].sum(axis=(1, 2))
    moved = area > 0
    box = pasted[moved][0, 0]
    rows, cols = np.flatnonzero(box.any(1)), np.flatnonzero(box.any(0))
    assert box[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()   # one solid rectangle
    lam = 1 - box.sum() / 256
    for i in np.flatnonzero(moved):
        assert targets[i, y[i]] == pytest.approx(lam, abs=1e-6)
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)


def test_random_erase_boxes(backend):
    x = minivit.get_xp(backend).ones((64, 3, 32, 32), np.float32)
    out = H(augment.random_erase(x, np.random.default_rng(0), prob=1.0))
    zero = (out == 0)[:, 0]
    frac = zero.mean(axis=(1, 2))
    assert (frac > 0).all() and frac.max() <= 1 / 3 + 0.05 and frac.min() >= 0.015
    assert ((out == 0).all(axis=1) == zero).all()                   # every channel alike
    np.testing.assert_array_equal(H(augment.random_erase(x, np.random.default_rng(0), prob=0.0)), H(x))


def test_training_with_every_regularizer_resumes_exactly(tmp_path, backend):
    cfg = TrainConfig.from_preset("sample", epochs=2, embed_dim=16, depth=2, num_heads=2,
                                  mlp_ratio=2.0, batch_size=32, limit_train=256, drop_path=0.2,
                                  mixup=0.8, cutmix=1.0, random_erase=0.25, randaugment=2)
    quiet = dict(progress=False, plots=False, log=lambda *a: None, backend=backend)
    train(cfg, out=tmp_path / "a", **quiet)
    train(cfg, out=tmp_path / "b", stop_after_epochs=1, **quiet)
    train(None, out=tmp_path / "b", resume=True, **quiet)
    a, b = ckpt.load(tmp_path / "a" / "checkpoint.npz")[0], ckpt.load(tmp_path / "b" / "checkpoint.npz")[0]
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("argv, message", [
    (["--drop-path", "1"], "argument --drop-path: must be in [0, 1), got 1"),
    (["--mixup", "-0.5"], "argument --mixup: must be a number >= 0, got -0.5"),
    (["--random-erase", "2"], "argument --random-erase: must be in [0, 1], got 2"),
    (["--randaugment", "-1"], "argument --randaugment: must be an integer >= 0, got -1"),
    (["--randaugment-magnitude", "11"], "argument --randaugment-magnitude: must be in [0, 10], got 11"),
])
def test_cli_validates_regularizer_options(argv, message, capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", *argv])
    assert message in capsys.readouterr().err


def test_ema_averages_weights_and_swaps_them_in(backend):
    model = minivit.ViT(**tiny_config(), backend=backend)
    ema = minivit.EMA(model, decay=0.9)
    w0 = H(model.flat_params).copy()
    history = [w0]
    for step in range(1, 6):
        model.flat_params += 0.1 * step                    # stand-in for optimizer steps
        history.append(H(model.flat_params).copy())
        ema.update()
    ref = w0.copy()
    for t, w in enumerate(history[1:], start=1):
        d = min(0.9, (1 + t) / (10 + t))
        ref = d * ref + (1 - d) * w
    np.testing.assert_allclose(H(ema.shadow), ref, rtol=1e-5)
    live = H(model.flat_params).copy()
    with ema.applied():
        np.testing.assert_array_equal(H(model.flat_params), H(ema.shadow))
        np.testing.assert_array_equal(H(model.params["head.weight"]).ravel(),
                                      H(ema.shadow)[-(3 * 8 + 3):-3])    # views follow the buffer
    np.testing.assert_array_equal(H(model.flat_params), live)
    with pytest.raises(ValueError, match=r"EMA decay must be in \(0, 1\), got 1.0"):
        minivit.EMA(model, 1.0)


def test_training_with_ema_evaluates_and_resumes_exactly(tmp_path, backend):
    cfg = TrainConfig.from_preset("sample", epochs=2, embed_dim=16, depth=1, num_heads=2,
                                  mlp_ratio=2.0, batch_size=32, limit_train=256, ema=0.99)
    quiet = dict(progress=False, plots=False, log=lambda *a: None, backend=backend)
    train(cfg, out=tmp_path / "a", **quiet)
    train(cfg, out=tmp_path / "b", stop_after_epochs=1, **quiet)
    train(None, out=tmp_path / "b", resume=True, **quiet)
    a_w, a_opt, a_meta = ckpt.load(tmp_path / "a" / "checkpoint.npz")
    b_w, b_opt, _ = ckpt.load(tmp_path / "b" / "checkpoint.npz")
    np.testing.assert_array_equal(a_opt["ema.shadow"], b_opt["ema.shadow"])
    for k in a_w:
        np.testing.assert_array_equal(a_w[k], b_w[k])
    assert a_meta["ema"]["t"] == a_meta["step"]
    one = TrainConfig.from_preset("sample", **{**cfg.__dict__, "epochs": 1, "preset": "sample"})
    train(one, out=tmp_path / "c", **quiet)
    best = ckpt.load(tmp_path / "c" / "best.npz")[0]                 # epoch 1: always the best
    last_w, last_opt, _ = ckpt.load(tmp_path / "c" / "checkpoint.npz")
    flat = np.concatenate([v.ravel() for v in best.values()])
    np.testing.assert_array_equal(flat, last_opt["ema.shadow"])      # evaluated: the average
    assert not np.array_equal(flat, np.concatenate([v.ravel() for v in last_w.values()]))


def test_mean_pooling_head_gradcheck_and_torch_layout(backend):
    model = minivit.ViT(**tiny_config(), dtype="float64", pool="mean", seed=3, backend=backend)
    report = gradcheck.check_model(model, batch_size=2, seed=1)
    assert report.passed, str(report)
    assert list(model.state_dict()) == list(minivit.ViT(**tiny_config()).state_dict())
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    cls_model = minivit.ViT(**tiny_config(), dtype="float64", seed=3, backend=backend)
    assert not np.allclose(H(model.forward(x)), H(cls_model.forward(x)))
    with pytest.raises(ValueError, match="unknown pool 'max': use one of cls, mean"):
        minivit.ViT(pool="max")
