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


def _model_muon(backend, cls, dtype="float64", **kwargs):
    """A small hybrid-like model (a conv stem, sequence pooling) and a Muon for it as
    run.make_optimizer builds one: its blocks' matrices (wide, tall, square) and the patch
    embedding's conv kernel by Muon, the rest by AdamW in two decay groups."""
    from minivit.run import MUON_PREFIXES, decay_groups
    model = minivit.ViT(img_size=8, patch_size=2, embed_dim=12, depth=2, num_heads=2, mlp_ratio=2.0,
                        num_classes=3, stem_channels=4, pool="seq", dtype=dtype, backend=backend, seed=1)
    groups = decay_groups(model, 0.05)
    matrices = [p for p in groups[0]["params"] if p.name.startswith(MUON_PREFIXES)]
    groups[0]["params"] = [p for p in groups[0]["params"] if p not in matrices]
    return model, cls(matrices, groups, lr=0.02, betas=(0.9, 0.99), weight_decay=0.05, **kwargs)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_stacked_muon_updates_as_the_engines_muon(backend, dtype):
    """fast.Muon(stacked=True), the GPU's Muon (every matrix through one padded stack, AdamW
    on the whole flat buffers), against the engine's optim.Muon on a copy of the model:
    the same weights, momentum and moments step after step, a skipped step included; the
    same state names, and a state moved from one to the other continues alike."""
    mine, a = _model_muon(backend, fast.Muon, dtype, stacked=True)
    ref, b = _model_muon(backend, optim.Muon, dtype)
    assert a.stacked and len(a._segments) == 1 and a.matrices.shape == (9, 12, 36)  # 5 shapes: 1 stack
    xp, rng = mine.xp, np.random.default_rng(2)
    tol = dict(rtol=1e-11, atol=1e-13) if dtype == "float64" else dict(rtol=2e-4, atol=2e-6)

    def steps(n, skipped=None):
        for step in range(n):
            g = xp.asarray(rng.standard_normal(mine.flat_grads.shape).astype(dtype))
            mine.flat_grads[...] = g
            ref.flat_grads[...] = g
            ok = xp.asarray(np.array(step != skipped))
            a.step(ok)
            b.step(ok)
    steps(4, skipped=2)
    np.testing.assert_allclose(H(mine.flat_params), H(ref.flat_params), **tol)
    state, ref_state = a.state_dict(), b.state_dict()
    assert sorted(state) == sorted(ref_state)
    for k in ref_state:
        np.testing.assert_allclose(np.asarray(state[k]), np.asarray(ref_state[k]), err_msg=k, **tol)
    a.load_state_dict(ref_state)                   # the engine's state, into the stack
    mine.flat_params[...] = ref.flat_params
    steps(2)
    np.testing.assert_allclose(H(mine.flat_params), H(ref.flat_params), **tol)


def test_the_stacked_muon_is_the_gpus_and_needs_one_model():
    """On NumPy fast.Muon keeps the engine's stacks (the CPU's numbers stay as they were);
    stacked=True asks for the GPU's one stack, which needs every matrix in one model's
    flat buffers (else the engine's stacks)."""
    _, opt = _model_muon("numpy", fast.Muon)
    assert not opt.stacked and len(opt.stacks) == 5
    loose = _params("numpy")
    assert not fast.Muon(loose[:5], loose[5:], lr=0.01, stacked=True).stacked
