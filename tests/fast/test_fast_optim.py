"""fast/optim.py: Muon with its stacks shared among threads updates as the engine's Muon."""

import numpy as np
import pytest

import minivit
from minivit import fast
from minivit.engine import optim
from minivit.engine.model import Param

H = minivit.to_host


def _params(backend, seed=0):
    """Matrices of three shapes (one stack each), a conv kernel, and a bias for AdamW."""
    xp = minivit.get_xp(backend)
    rng = np.random.default_rng(seed)
    shapes = {"a.0": (6, 4), "a.1": (6, 4), "b": (4, 6), "c": (5, 8), "k": (3, 2, 2, 2), "bias": (4,)}
    return [Param(k, xp.asarray(rng.standard_normal(s)), xp.zeros(s)) for k, s in shapes.items()]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_muon_on_threads_updates_as_the_engines_muon(backend, threads):
    mine, ref = _params(backend), _params(backend)
    a = fast.Muon(mine[:5], mine[5:], lr=0.01, weight_decay=0.1, threads=threads)
    b = optim.Muon(ref[:5], ref[5:], lr=0.01, weight_decay=0.1)
    assert a.threads == threads and len(a.stacks) == 4
    rng = np.random.default_rng(1)
    xp = minivit.get_xp(backend)
    for _ in range(3):
        for p, q in zip(mine, ref):
            p.grad[...] = q.grad[...] = xp.asarray(rng.standard_normal(p.grad.shape))
        a.step()
        b.step()
    for p, q in zip(mine, ref):
        np.testing.assert_allclose(H(p.data), H(q.data), rtol=1e-12, atol=1e-14, err_msg=p.name)
    state, ref_state = a.state_dict(), b.state_dict()
    assert sorted(state) == sorted(ref_state)
    a.step(xp.zeros((), dtype=bool))                  # a step flagged bad changes nothing
    for p, q in zip(mine, ref):
        np.testing.assert_allclose(H(p.data), H(q.data), rtol=1e-12, atol=1e-14, err_msg=p.name)


def test_muon_threads_default_to_the_cpus(monkeypatch):
    monkeypatch.setenv("MINIVIT_THREADS", "3")
    params = _params("numpy")
    assert fast.Muon(params[:1], params[5:], lr=0.01).threads == 3
