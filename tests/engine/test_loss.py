"""engine/loss.py: softmax cross-entropy against the formula written out (and PyTorch's,
when installed), soft targets, and the checks of its arguments. (Its gradient:
test_gradcheck.py, the cross_entropy cases of LAYERS; the fused version:
tests/fast/test_fast_loss.py.)"""

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


def test_stable_for_huge_logits():
    loss, dlogits = minivit.cross_entropy(np.array([[1e4, 0.0, -1e4]], dtype=np.float32), [1])
    assert abs(float(loss) - 1e4) < 1 and np.isfinite(dlogits).all()
    assert loss.dtype == np.float32 and dlogits.dtype == np.float32


def test_matches_torch_cross_entropy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    logits, labels = rng.standard_normal((8, 10)) * 3, rng.integers(0, 10, 8)
    for eps in (0.0, 0.2):
        loss, _ = minivit.cross_entropy(logits, labels, eps)
        ref = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels),
                                                label_smoothing=eps)
        assert abs(float(loss) - ref.item()) < 1e-12


def test_one_hot_soft_targets_are_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 4))
    labels = rng.integers(0, 4, 5)
    onehot = np.eye(4)[labels]
    for eps in (0.0, 0.1):
        hard = minivit.cross_entropy(logits, labels, eps)
        soft = minivit.cross_entropy(logits, onehot, eps)
        assert abs(float(hard[0]) - float(soft[0])) < 1e-12
        np.testing.assert_allclose(hard[1], soft[1], atol=1e-15)


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
    with pytest.raises(ValueError, match=r"soft targets must have the logits' shape \(3, 4\)"):
        minivit.cross_entropy(logits, np.ones((3, 3)) / 3)


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


@pytest.mark.parametrize("labels, error, message", [
    (np.array([0.0, 1.0]), TypeError, "labels must be integer class indices, got float64"),
    (np.array([[0], [1]]), ValueError, "labels must have shape (2,), one per logits row, got (2, 1)"),
    (np.array([0, 3]), ValueError, "labels must lie in [0, 3), got values from 0 to 3"),
    (np.array([-1, 0]), ValueError, "labels must lie in [0, 3), got values from -1 to 0"),
    (np.array([0, 1, 2]), ValueError, "labels must have shape (2,)"),
])
def test_bad_labels(labels, error, message):
    with pytest.raises(error) as err:
        minivit.cross_entropy(np.zeros((2, 3)), labels)
    assert message in str(err.value)


def test_bad_logits_or_smoothing():
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\], got 1.5"):
        minivit.cross_entropy(np.zeros((1, 3)), [0], 1.5)
    with pytest.raises(ValueError, match=r"logits must be \[B, num_classes\], got shape \(3,\)"):
        minivit.cross_entropy(np.zeros(3), [0])
