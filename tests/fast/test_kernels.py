"""fast/kernels.py: the fused kernels against the engine's layers, and the CPU's blocked
GELU (float32): its accuracy, when it is taken, and the check that reaches it."""

import numpy as np
import pytest
from scipy.special import erf

from minivit.engine import layers
from minivit.fast import check, kernels, runner


@pytest.fixture
def big():
    rng = np.random.default_rng(0)
    x = (2 * rng.standard_normal((4 * kernels.BLOCK // 96 + 7, 96))).astype(np.float32)
    assert kernels.takes_blocked_gelu(x)   # large enough, and not a multiple of the block size
    return x, rng.standard_normal(x.shape).astype(np.float32)


def test_normal_cdf_is_accurate_to_float32():
    xs = np.linspace(-12, 12, 400_001).astype(np.float32)
    gauss = np.exp(-0.5 * xs * xs)
    cdf = kernels.normal_cdf(xs, gauss).astype(np.float64)
    exact = 0.5 * (1 + erf(xs.astype(np.float64) / np.sqrt(2)))
    assert np.abs(cdf - exact).max() < 3e-7
    assert cdf.min() >= 0 and cdf.max() <= 1


def test_blocked_gelu_is_accurate_at_the_extremes():
    x = np.array([0.0, -0.0, 1e-30, -1e-30, 3.0, -3.0, 8.0, -8.0, 40.0, -40.0, 1e4, -1e4]
                 * kernels.BLOCK, np.float32)[:4 * kernels.BLOCK]         # four blocks
    y, dgelu = kernels.blocked_gelu(x)
    xd = x.astype(np.float64)
    cdf = 0.5 * (1 + erf(xd / np.sqrt(2)))
    assert np.isfinite(y).all() and np.isfinite(dgelu).all()
    np.testing.assert_allclose(y, xd * cdf, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dgelu, cdf + xd * np.exp(-xd * xd / 2) / np.sqrt(2 * np.pi),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["exact", "tanh"])
def test_gelu_kernels_agree_with_the_engine(big, kind):
    x, dy = big
    b = np.linspace(-1, 1, x.shape[-1]).astype(np.float32)
    y, dgelu = runner.GELU_BIAS_KERNELS[kind](x, b)                    # blocked for exact float32 NumPy
    forward, backward = layers.GELUS[kind]
    y_ref, cache = forward(x + b)
    assert y.dtype == dgelu.dtype == np.float32
    np.testing.assert_allclose(y, y_ref, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(dy * dgelu, backward(dy, cache), rtol=2e-6, atol=2e-6)
    x64 = x[:50].astype(np.float64)                        # float64: the plain body, exact
    y, dgelu = runner.GELU_BIAS_KERNELS[kind](x64, b.astype(np.float64))
    y_ref, cache = forward(x64 + b)
    np.testing.assert_allclose(y, y_ref, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(dgelu, backward(np.ones_like(x64), cache), rtol=1e-12, atol=1e-13)


def test_small_and_float64_arrays_skip_the_blocked_gelu(monkeypatch):
    assert not kernels.takes_blocked_gelu(np.zeros(kernels.MIN_SIZE - 1, np.float32))
    assert kernels.takes_blocked_gelu(np.zeros(kernels.MIN_SIZE, np.float32))
    # one thread's shard of the hybrid's MLP activation at 16x16 (64 images, 17 tokens, 192)
    assert kernels.takes_blocked_gelu(np.zeros((64, 17, 192), np.float32))
    assert not kernels.takes_blocked_gelu(np.zeros(4 * kernels.BLOCK, np.float64))
    monkeypatch.setattr(kernels, "BLOCKED_GELU", False)    # the switch (MINIVIT_NO_BLOCKED_GELU=1)
    assert not kernels.takes_blocked_gelu(np.zeros(4 * kernels.BLOCK, np.float32))


def test_the_blocked_gelu_check_reaches_the_blocked_path_and_catches_an_error(monkeypatch):
    calls = []
    real = kernels.blocked_gelu
    monkeypatch.setattr(kernels, "blocked_gelu", lambda x: calls.append(x.size) or real(x))
    report = check.check_blocked_gelu()
    assert report.passed, str(report)
    assert calls and calls[0] > kernels.BLOCK                   # several blocks
    real_cdf = kernels.normal_cdf
    monkeypatch.setattr(kernels, "normal_cdf", lambda x, gauss: real_cdf(x, gauss) + np.float32(1e-5))
    report = check.check_blocked_gelu()
    assert not report["GELU(x)"].passed and not report["GELU'(x)"].passed


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sums_by_blas_equal_numpys_sums(dtype):
    """row_sums and column_sums (a product with a vector of ones on NumPy) give NumPy's
    sums to rounding, on contiguous arrays and on views (which take NumPy's sum)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 65, 65)).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a in (x, x[:, :, :, :40], x.transpose(0, 1, 3, 2)):
        got = kernels.row_sums(a)
        assert got.shape == a.shape[:-1] + (1,) and got.dtype == dtype
        np.testing.assert_allclose(got, a.sum(axis=-1, keepdims=True), rtol=tol, atol=tol * 10)
    x2 = x.reshape(-1, 65)
    for a in (x2, x2[::2]):
        out = np.full(65, np.nan, dtype=dtype)
        assert kernels.column_sums(a, out=out) is out
        np.testing.assert_allclose(out, a.sum(axis=0), rtol=tol, atol=tol * 100)
    short, long = kernels._ones(3, dtype), kernels._ones(5000, dtype)
    assert not short.flags.writeable and not long.flags.writeable
    assert np.array_equal(kernels._ones(3, dtype), np.ones(3)) and len(kernels._ones(4999, dtype)) == 4999
