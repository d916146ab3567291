import math

import numpy as np
import pytest

import minivit
from minivit.engine import gradcheck


def reference_loss(logits, labels, eps):
    total = 0.0
    for z, y in zip(logits.tolist(), labels):
        lse = math.log(sum(math.exp(v) for v in z))
        logp = [v - lse for v in z]
        total += -(1 - eps) * logp[y] - eps * sum(logp) / len(z)
    return total / len(labels)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_matches_the_written_out_formula(eps, backend):
    xp = minivit.get_xp(backend)
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    loss, dlogits = minivit.cross_entropy(xp.asarray(logits), xp.asarray(labels), eps)
    assert abs(float(loss) - reference_loss(logits, labels, eps)) < 1e-12
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    q = np.full((6, 4), eps / 4)
    q[np.arange(6), labels] += 1 - eps
    np.testing.assert_allclose(minivit.to_host(dlogits), (p - q) / 6, rtol=1e-12, atol=1e-15)


def test_gradcheck_with_and_without_smoothing():
    for name in ("cross_entropy", "cross_entropy_smoothed"):
        assert gradcheck.check_layer(name).passed


def test_stable_for_huge_logits():
    loss, dlogits = minivit.cross_entropy(np.array([[1e4, 0.0, -1e4]], dtype=np.float32), [1])
    assert abs(float(loss) - 1e4) < 1 and np.isfinite(dlogits).all()
    assert loss.dtype == np.float32 and dlogits.dtype == np.float32


def test_label_smoothing_out_of_range():
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\], got 1.5"):
        minivit.cross_entropy(np.zeros((1, 3)), [0], 1.5)


def test_matches_torch_cross_entropy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    logits, labels = rng.standard_normal((8, 10)) * 3, rng.integers(0, 10, 8)
    for eps in (0.0, 0.2):
        loss, _ = minivit.cross_entropy(logits, labels, eps)
        ref = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels),
                                                label_smoothing=eps)
        assert abs(float(loss) - ref.item()) < 1e-12


def test_soft_targets_that_are_not_probabilities_are_refused_on_the_host():
    logits = np.zeros((3, 4))
    q = np.full((3, 4), 0.25)
    q[1] *= 2                                           # row 1 sums to 2
    with pytest.raises(ValueError, match=r"row 1 sums to 2: divide each row by its sum"):
        minivit.cross_entropy(logits, q)
    q[1] = [1.5, -0.5, 0.0, 0.0]                        # sums to 1, one entry negative
    with pytest.raises(ValueError, match=r"row 1 has a negative entry \(-0.5\)"):
        minivit.cross_entropy(logits, q)
    q[1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        minivit.cross_entropy(logits, q)


def test_soft_targets_on_the_device_are_not_read_and_dlogits_is_still_the_gradient(backend):
    """Targets already on the device are not checked (that would wait for the GPU), so
    dlogits must be the gradient of the returned loss for any rows: (sum q) p - q.
    (Before, dlogits was p - q: relative error 0.8 against finite differences.)"""
    xp = minivit.get_xp(backend)
    rng = np.random.default_rng(3)
    q = 3 * rng.random((4, 5)) - 0.5                    # rows summing to anything, some < 0
    logits = xp.asarray(2 * rng.standard_normal((4, 5)))
    if xp is np:                                        # NumPy targets are on the host: refused
        with pytest.raises(ValueError, match="soft targets must be probabilities"):
            minivit.cross_entropy(logits, q)
        q = np.abs(q) / np.abs(q).sum(axis=1, keepdims=True)
    q = xp.asarray(q)
    report = gradcheck.check(lambda logits: minivit.cross_entropy(logits, q, 0.1),
                             lambda dloss, dlogits: (dloss * dlogits,), {"logits": logits})
    assert report.passed, str(report)
