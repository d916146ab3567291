"""The engine against numbers PyTorch computed (tests/reference/torch_simplevit.npz,
written by tests/reference/make_torch_reference.py with benchmarks/torch_simplevit.py):
logits, loss, every gradient, and Adam and AdamW steps, in float64. Runs without PyTorch.
(The fast path against the same numbers: tests/fast/test_runner.py.)"""

import os

import numpy as np
import pytest

import minivit

from helpers import TORCH_REFERENCE, model_from_reference, prefixed, torch_reference

TOL = dict(rtol=1e-10, atol=1e-12)
H = minivit.to_host


@pytest.fixture(scope="module")
def ref():
    return torch_reference()


def test_the_reference_file_is_small_and_complete(ref):
    assert os.path.getsize(TORCH_REFERENCE) < 1 << 20
    model = model_from_reference(ref)
    names = set(model.state_dict())
    assert set(prefixed(ref, "param/")) == names and set(prefixed(ref, "grad/")) == names | {"input"}
    for opt in ("adam", "adamw"):
        for step in ref["meta"]["steps"]:
            assert set(prefixed(ref, f"{opt}/{step}/")) == names


def test_logits_loss_and_every_gradient_match_pytorch(ref, backend):
    model = model_from_reference(ref, backend)
    logits = model.forward(ref["x"])
    np.testing.assert_allclose(H(logits), ref["logits"], **TOL)
    loss, dlogits = minivit.cross_entropy(logits, model.xp.asarray(ref["labels"]),
                                          ref["meta"]["label_smoothing"])
    assert abs(float(loss) - float(ref["loss"])) < 1e-12
    model.zero_grad()
    dx = model.backward(dlogits)
    np.testing.assert_allclose(H(dx), ref["grad/input"], **TOL)
    for name, g in model.grads().items():
        np.testing.assert_allclose(H(g), ref[f"grad/{name}"], err_msg=name, **TOL)


@pytest.mark.parametrize("opt", ["adam", "adamw"])
def test_adam_and_adamw_steps_match_pytorch(ref, backend, opt):
    """The same gradient (PyTorch's) at every step; the weights after 1 and 3 steps.
    Compared to 1e-10, not bitwise: the order of the scalar arithmetic may differ."""
    model = model_from_reference(ref, backend)
    hyper = dict(ref["meta"][opt])
    cls = minivit.Adam if opt == "adam" else minivit.AdamW
    optimizer = cls(model.parameters(), lr=hyper["lr"], betas=tuple(hyper["betas"]), eps=hyper["eps"],
                    weight_decay=hyper["weight_decay"])
    grads = prefixed(ref, "grad/")
    for step in range(1, max(ref["meta"]["steps"]) + 1):
        model.zero_grad()
        for name, g in model.grads().items():
            g[...] = model.xp.asarray(grads[name])
        optimizer.step()
        if step in ref["meta"]["steps"]:
            for name, w in model.state_dict().items():
                np.testing.assert_allclose(H(w), ref[f"{opt}/{step}/{name}"], err_msg=f"step {step}: {name}",
                                           **TOL)
