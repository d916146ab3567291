"""fast/loss.py: the fused cross-entropy gives the engine's numbers (engine/loss.py), with
the same checks of its arguments."""

import numpy as np
import pytest

import minivit
from minivit import fast
from minivit.engine import loss as engine_loss

H = minivit.to_host


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("targets", ["labels", "soft"])
def test_the_fused_loss_gives_the_engines_numbers(backend, dtype, smoothing, targets):
    xp = minivit.get_xp(backend)
    rng = np.random.default_rng(0)
    logits = xp.asarray((3 * rng.standard_normal((6, 5))).astype(dtype))
    if targets == "labels":
        y = xp.asarray(rng.integers(0, 5, 6))
    else:
        q = rng.random((6, 5))
        y = xp.asarray((q / q.sum(axis=1, keepdims=True)).astype(dtype))
    loss, dlogits = fast.cross_entropy(logits, y, smoothing)
    ref_loss, ref_dlogits = engine_loss.cross_entropy(logits, y, smoothing)
    assert loss.shape == () and loss.dtype == dlogits.dtype == np.dtype(dtype)
    tol = dict(rtol=1e-12, atol=1e-15) if dtype == "float64" else dict(rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(loss), float(ref_loss), **tol)
    np.testing.assert_allclose(H(dlogits), H(ref_dlogits), **tol)


def test_the_fused_loss_checks_its_arguments_as_the_engine_does():
    logits = np.zeros((2, 3))
    for labels, error in ((np.array([0.0, 1.0]), TypeError), (np.array([0, 3]), ValueError),
                          (np.full((2, 3), 0.5), ValueError)):
        with pytest.raises(error) as fused:
            fast.cross_entropy(logits, labels)
        with pytest.raises(error) as engine:
            engine_loss.cross_entropy(logits, labels)
        assert str(fused.value) == str(engine.value)
