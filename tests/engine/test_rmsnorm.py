"""RMSNorm (--norm rmsnorm): the formula, the model built with it (its layer, block and
head are in the all-layers check of test_gradcheck.py), the fast path equal to the
engine, and a planted bug caught."""

import numpy as np
import pytest

from minivit.engine import gradcheck, layers
from minivit.engine.model import ViT
from minivit.fast.check import compare

SMALL = dict(img_size=8, patch_size=4, embed_dim=8, depth=2, num_heads=2, mlp_ratio=2.0,
             num_classes=3, dtype="float64")


def test_rmsnorm_is_the_formula():
    x = np.random.default_rng(0).standard_normal((2, 3, 8))
    w = np.linspace(0.5, 1.5, 8)
    y, _ = layers.rmsnorm_forward(x, w)
    want = x / np.sqrt((x ** 2).mean(axis=-1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(y, want, rtol=1e-12)


def test_a_model_with_rmsnorm_has_no_norm_biases_and_checks():
    model = ViT(**SMALL, norm="rmsnorm")
    names = model.param_shapes()
    assert "blocks.0.norm1.weight" in names and "norm.weight" in names
    assert not [n for n in names if "norm" in n and n.endswith(".bias")]
    assert len(names) == len(ViT(**SMALL).param_shapes()) - 2 * SMALL["depth"] - 1
    report = gradcheck.check_model(model, batch_size=2, max_checks=30)
    assert report.passed, str(report)


@pytest.mark.parametrize("pool", ["cls", "seq"])
def test_the_fast_path_equals_the_engine_with_rmsnorm(pool):
    model = ViT(**SMALL, norm="rmsnorm", pool=pool, drop_path=0.5, seed=3)
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8))
    diffs = compare(model, x, draws_seed=2)
    assert max(diffs.values()) < 1e-12, diffs


def test_rmsnorm_without_its_mean_term_fails_the_check(monkeypatch):
    def wrong_backward(dy, cache):             # the path through r left out
        dw = (dy * cache.xhat).reshape(-1, cache.w.shape[0]).sum(axis=0)
        return cache.rstd * dy * cache.w, dw
    monkeypatch.setitem(gradcheck.LAYERS, "rmsnorm", lambda rng: (
        layers.rmsnorm_forward, wrong_backward,
        {"x": rng.standard_normal((2, 3, 8)), "w": 1 + 0.5 * rng.standard_normal(8)}))
    report = gradcheck.check_layer("rmsnorm")
    assert not report["x"].passed and report["w"].passed
