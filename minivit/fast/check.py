"""The fast path checked against the engine: before every fast training run (one tiny
batch, forward and backward, in float64) and in the tests. A fast path that disagrees
with the engine means the engine was changed and the fast path was not: the run stops
and says to train the engine itself (--engine reference).

    problem = check_against_engine(model)       # None, or one line saying what differs
"""

import dataclasses

import numpy as np

from ..engine import gradcheck, layers, transformer
from ..engine.backend import array_module, get_xp, to_device, to_host
from ..engine.draws import StepDraws
from ..engine.gradcheck import Report, TensorResult
from ..engine.model import ViT
from . import kernels
from .runner import FastRunner, block_backward_into, block_fused

TOLERANCE = 1e-6     # float64: the two paths agree to about 1e-12; a changed layer, far more
WAY_OUT = "the engine was changed and the fast path was not; train the engine as it is with --engine reference"


def relative_difference(a, b):
    """||a - b|| / max(||a||, ||b||) on the host, in float64 (0 when both are 0)."""
    a, b = to_host(a).astype(np.float64), to_host(b).astype(np.float64)
    scale = max(np.linalg.norm(a), np.linalg.norm(b))
    return float(np.linalg.norm(a - b) / scale) if scale > 0 else 0.0


class FastPathRaised(Exception):
    """The fast path raised on a model the engine runs: it was not taught something the
    engine computes (a new setting's value it looks up in a table of its own)."""


def compare(model, images, draws_seed=0):
    """Run model (float64, its weights) on images through the engine and the fast path ->
    {"logits": rel diff, "input": ..., parameter name: ...}, the gradients of
    sum(logits * G) for a fixed random G, with the same random draws on both. The fast
    path missing a setting's value in a table of its own (a KeyError where the engine ran):
    FastPathRaised, naming it."""
    rng = np.random.default_rng(draws_seed)
    draws = StepDraws.sample(model.config, len(images), rng, model.xp, model.dtype)
    results, grads = [], []
    for fast in (False, True):
        model.zero_grad()
        try:
            net = FastRunner(model, threads=1) if fast else model
            logits = net.forward(images, draws=draws)
            G = to_device(np.random.default_rng(draws_seed).standard_normal(logits.shape), model.xp, model.dtype)
            dx = net.backward(G)
        except KeyError as error:               # a value the fast path's tables do not have;
            if not fast:                        # any other error is a bug: its traceback stays
                raise
            raise FastPathRaised(f"{type(error).__name__}: {error}") from error
        results.append((logits, dx))
        grads.append({k: v.copy() for k, v in model.grads().items()})
    model.zero_grad()
    diffs = {"logits": relative_difference(results[0][0], results[1][0]),
             "input": relative_difference(results[0][1], results[1][1])}
    diffs.update({name: relative_difference(grads[0][name], grads[1][name]) for name in grads[0]})
    return diffs


def check_against_engine(model, sides=None, batch=1, seed=0):
    """The fast path against the engine on `batch` random images of each side in sides
    (default: the model's full size), on a float64 copy of model (same config and
    weights) -> None when they agree to TOLERANCE, else one line naming the worst
    difference and the way out."""
    c = model.config
    copy = ViT(dataclasses.replace(c, dtype="float64"), backend=model.backend, seed=seed)
    copy.load_state_dict(model.state_dict())
    worst = ("", 0.0, 0)
    for side in sides or [c.img_size]:
        x = np.random.default_rng(seed).standard_normal((batch, c.in_chans, side, side))
        try:
            diffs = compare(copy, x, draws_seed=seed)
        except FastPathRaised as error:
            return (f"the fast path cannot run this model though the engine can ({error}, on "
                    f"{side}x{side} images): {WAY_OUT}")
        for name, diff in diffs.items():
            if diff > worst[1]:
                worst = (name, diff, side)
    name, diff, side = worst
    if diff <= TOLERANCE:
        return None
    what = "the logits differ" if name == "logits" else f"the gradient of {name} differs"
    return (f"the fast path disagrees with the engine ({what} by {diff:.1e} relative on "
            f"{side}x{side} images, more than {TOLERANCE:g}): {WAY_OUT}")


def check_blocked_gelu(seed=0, tol=1e-6):
    """The CPU's float32 GELU (kernels.blocked_gelu, taken for float32 arrays of MIN_SIZE
    elements and more) against the engine's exact GELU and its derivative in float64, on
    four blocks: training's MLP activations on NumPy go through it, the small float64
    checks never reach it. -> a gradcheck Report."""
    x = (3 * np.random.default_rng(seed).standard_normal(4 * kernels.BLOCK)).astype(np.float32)
    x[:4] = (-10.0, -0.05, 0.05, 10.0)              # the tails, and where normal_cdf errs most
    y, dgelu = kernels.blocked_gelu(x)
    ref, cache = layers.gelu_forward(x.astype(np.float64))
    dref = layers.gelu_backward(np.ones_like(ref), cache)
    results = []
    for name, got, want in (("GELU(x)", y, ref), ("GELU'(x)", dgelu, dref)):
        diff = got.astype(np.float64) - want
        rel = float(np.linalg.norm(diff) / np.linalg.norm(want))
        results.append(TensorResult(name, x.shape, x.size, float(np.abs(diff).max()), rel, rel <= tol))
    return Report(f"blocked GELU (float32, {x.size:,} elements: the CPU fast path) against the "
                  f"exact GELU in float64", results, "float32", 0.0, tol)


def one_thread(model):
    """The fast path on one thread: the runner gradient checks use (gradcheck.check_models'
    runners={"fast": one_thread})."""
    return FastRunner(model, threads=1)


def check_cls_only_block(dtype="float64", backend="numpy", seed=0, max_checks=None):
    """Gradient check of the fast path's class-token-only last block (runner.block_fused
    with cls_only: only the class token's output row), with stochastic depth."""
    def forward(x, p, num_heads, keep=None, norm="layernorm"):
        return block_fused(x, p, num_heads, keep=keep, cls_only=True, norm=norm)

    def backward(dy, cache):
        xp = array_module(dy)
        grads = {name: xp.empty(shape, dtype=dy.dtype)
                 for name, shape in transformer.block_param_shapes(8, 16).items()}
        return block_backward_into(dy, cache, grads, xp), grads

    xp = get_xp(backend)
    forward_, backward_, host = gradcheck.block_case(np.random.default_rng(seed), drop_path=True,
                                                     forward=forward, backward=backward)
    inputs = {k: to_device(v, xp, dtype) for k, v in host.items()}
    return gradcheck.check(forward_, backward_, inputs, seed=seed, max_checks=max_checks,
                           title="block_cls_only (fast path)")


def fast_path_reports(dtype="float64", backend="numpy", max_checks=None, seed=0):
    """The fast path's own gradient checks: the class-token-only block and (NumPy) the
    blocked GELU. The whole models through the fast path: gradcheck.check_models with
    runners={"reference": None, "fast": one_thread}."""
    reports = [check_cls_only_block(dtype, backend, seed, max_checks)]
    if get_xp(backend) is np:
        reports.append(check_blocked_gelu(seed))
    return reports
