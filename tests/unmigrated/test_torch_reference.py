"""minivit against numbers PyTorch computed (tests/reference/torch_simplevit.npz, written
by tests/reference/make_torch_reference.py with benchmarks/torch_simplevit.py): logits,
loss, every gradient, and Adam and AdamW steps, in float64. Runs without PyTorch."""

import json
import os

import numpy as np
import pytest

import minivit
from minivit.fast import FastRunner

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference", "torch_simplevit.npz")
TOL = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def ref():
    with np.load(REFERENCE, allow_pickle=False) as f:
        arrays = dict(f)
    arrays["meta"] = json.loads(str(arrays["meta"]))
    return arrays


def prefixed(ref, prefix):
    return {k[len(prefix):]: v for k, v in ref.items() if k.startswith(prefix)}


def model_from(ref, backend="numpy"):
    model = minivit.ViT(**ref["meta"]["config"], dtype="float64", backend=backend)
    model.load_state_dict(prefixed(ref, "param/"))
    return model


def test_the_reference_file_is_small_and_complete(ref):
    assert os.path.getsize(REFERENCE) < 1 << 20
    model = model_from(ref)
    names = set(model.state_dict())
    assert set(prefixed(ref, "param/")) == names and set(prefixed(ref, "grad/")) == names | {"input"}
    for opt in ("adam", "adamw"):
        for step in ref["meta"]["steps"]:
            assert set(prefixed(ref, f"{opt}/{step}/")) == names


@pytest.mark.parametrize("runner", ["reference", "fast"])
def test_logits_loss_and_every_gradient_match_pytorch(ref, backend, runner):
    H = minivit.to_host
    model = model_from(ref, backend)
    net = FastRunner(model, threads=1) if runner == "fast" else model
    logits = net.forward(ref["x"])
    np.testing.assert_allclose(H(logits), ref["logits"], **TOL)
    loss, dlogits = minivit.cross_entropy(logits, model.xp.asarray(ref["labels"]),
                                          ref["meta"]["label_smoothing"])
    assert abs(float(loss) - float(ref["loss"])) < 1e-12
    model.zero_grad()
    dx = net.backward(dlogits)
    np.testing.assert_allclose(H(dx), ref["grad/input"], **TOL)
    for name, g in model.grads().items():
        np.testing.assert_allclose(H(g), ref[f"grad/{name}"], err_msg=name, **TOL)


@pytest.mark.parametrize("opt", ["adam", "adamw"])
def test_adam_and_adamw_steps_match_pytorch(ref, backend, opt):
    """The same gradient (PyTorch's) at every step; the weights after 1 and 3 steps.
    Compared to 1e-10, not bitwise: the order of the scalar arithmetic may differ."""
    H = minivit.to_host
    model = model_from(ref, backend)
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
