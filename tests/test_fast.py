"""The CPU fast paths agree with the plain code of layers.py, and their gradients check."""

import numpy as np
import pytest
from scipy.special import erf

import minivit
from minivit import fast, gradcheck, layers


@pytest.fixture
def big():
    rng = np.random.default_rng(0)
    x = (2 * rng.standard_normal((4 * fast.BLOCK // 96 + 7, 96))).astype(np.float32)
    assert fast.applies(x)          # large enough, and not a multiple of the block size
    return x, rng.standard_normal(x.shape).astype(np.float32)


def test_normal_cdf_is_accurate_to_float32():
    xs = np.linspace(-12, 12, 400_001).astype(np.float32)
    gauss = np.exp(-0.5 * xs * xs)
    cdf = fast.normal_cdf(xs, gauss).astype(np.float64)
    exact = 0.5 * (1 + erf(xs.astype(np.float64) / np.sqrt(2)))
    assert np.abs(cdf - exact).max() < 3e-7
    assert cdf.min() >= 0 and cdf.max() <= 1


def test_fast_gelu_is_accurate_at_the_extremes():
    x = np.array([0.0, -0.0, 1e-30, -1e-30, 3.0, -3.0, 8.0, -8.0, 40.0, -40.0, 1e4, -1e4]
                 * fast.MIN_SIZE, np.float32)[:fast.MIN_SIZE]
    y, dgelu = fast.gelu_forward(x)
    xd = x.astype(np.float64)
    cdf = 0.5 * (1 + erf(xd / np.sqrt(2)))
    assert np.isfinite(y).all() and np.isfinite(dgelu).all()
    np.testing.assert_allclose(y, xd * cdf, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dgelu, cdf + xd * np.exp(-xd * xd / 2) / np.sqrt(2 * np.pi),
                               rtol=1e-6, atol=1e-6)


def test_fast_gelu_agrees_with_the_plain_path(big, monkeypatch):
    x, dy = big
    y_fast, cache_fast = layers.gelu_forward(x)
    assert cache_fast[3] is not None                       # the fast path ran
    dx_fast = layers.gelu_backward(dy, cache_fast)
    monkeypatch.setattr(fast, "ENABLED", False)
    y_plain, cache_plain = layers.gelu_forward(x)
    assert cache_plain[3] is None                          # the plain path ran
    dx_plain = layers.gelu_backward(dy, cache_plain)
    assert y_fast.dtype == dx_fast.dtype == np.float32
    np.testing.assert_allclose(y_fast, y_plain, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(dx_fast, dx_plain, rtol=2e-6, atol=2e-6)


def test_fast_gelu_gradient_checks_in_float32(big):
    x, _ = big
    report = gradcheck.check(lambda x: layers.gelu_forward(x), layers.gelu_backward,
                             {"x": x}, max_checks=60, seed=1)
    assert report.passed, str(report)


def test_small_and_float64_arrays_take_the_plain_path():
    assert not fast.applies(np.zeros(10, np.float32))
    assert not fast.applies(np.zeros(4 * fast.BLOCK, np.float64))
    assert layers.gelu_forward(np.zeros(4 * fast.BLOCK))[1][3] is None


def test_model_with_and_without_fast_paths(monkeypatch):
    model = minivit.ViT(embed_dim=96, depth=1, num_heads=3, mlp_ratio=4.0)
    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32))   # [16, 65, 384] hidden: fast
    labels = np.arange(16) % 10
    logits = model.forward(x)
    model.backward(minivit.cross_entropy(logits, labels)[1])
    grads = {k: v.copy() for k, v in model.grads().items()}
    model.zero_grad()
    monkeypatch.setattr(fast, "ENABLED", False)
    plain = model.forward(x)
    model.backward(minivit.cross_entropy(plain, labels)[1])
    np.testing.assert_allclose(logits, plain, rtol=1e-5, atol=1e-6)
    for k, g in model.grads().items():
        np.testing.assert_allclose(grads[k], g, rtol=1e-4, atol=1e-4 * float(np.abs(g).max()))
