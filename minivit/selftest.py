"""`minivit selftest`: check, on this machine, what the test suite cannot check without it.

CI has no GPU: it runs the CuPy path on a strict stand-in that enforces CuPy's rules, which
proves the code never mixes host and device arrays and uses only CuPy's API, but not
CUDA's numerics, memory or speed. On a machine with a GPU, this command checks the rest:

1. every layer's backward against finite differences, in float64, on the backend;
2. the whole model's gradient, in float64;
3. the fast path (fast.FastViT) against the reference forward and backward;
4. three training steps on the backend against the same steps on NumPy (float64: the
   weights agree to 1e-9 relative);
5. the time of one training step of the default ViT at batch 80.

Without a GPU, it runs the NumPy side and says why the GPU side was skipped.
"""

import time
from dataclasses import dataclass

import numpy as np

from . import gradcheck
from .backend import gpu_unavailable_reason, resolve_backend, to_host
from .config import TrainConfig, ViTConfig
from .fast import FastViT
from .loss import cross_entropy
from .model import ViT
from .optim import clip_grad_norm
from .train import make_optimizer

SMALL = ViTConfig(img_size=8, patch_size=4, embed_dim=12, depth=2, num_heads=3, mlp_ratio=2.0,
                  num_classes=5, dtype="float64")
STEPS_RTOL = 1e-9


@dataclass
class Check:
    name: str
    backend: str
    passed: bool
    detail: str


def _train_steps(backend, steps=3, batch=6):
    """Flat weights after `steps` AdamW steps (clip, drop path, label smoothing) of a small
    float64 ViT on fixed batches."""
    cfg = TrainConfig.from_preset("default", **{**SMALL.__dict__, "drop_path": 0.3})
    model = ViT(cfg.model_config(), backend=backend, seed=1)
    net, opt = FastViT(model), make_optimizer(cfg, model)
    rng = np.random.default_rng(0)
    for step in range(steps):
        x = rng.standard_normal((batch, 3, SMALL.img_size, SMALL.img_size))
        y = model.xp.asarray(rng.integers(0, SMALL.num_classes, batch))
        logits = net.forward(x, rng=np.random.default_rng(step))
        loss, dlogits = cross_entropy(logits, y, cfg.label_smoothing)
        model.zero_grad()
        net.backward(dlogits, need_dx=False)
        clip_grad_norm(model.parameters(), cfg.clip_grad)
        opt.step()
    return to_host(model.flat_params)


def _step_time(backend, batch=80, repeats=3):
    """Median seconds of one training step of the default ViT (float32) at batch 80."""
    cfg = TrainConfig.from_preset("default")
    model = ViT(cfg.model_config(), backend=backend)
    net, opt = FastViT(model), make_optimizer(cfg, model)
    xp = model.xp
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32))
    y = xp.asarray(rng.integers(0, 10, batch))

    def step():
        loss, dlogits = cross_entropy(net.forward(x), y, cfg.label_smoothing)
        model.zero_grad()
        net.backward(dlogits, need_dx=False)
        clip_grad_norm(model.parameters(), cfg.clip_grad)
        opt.step()
        float(loss)                                  # wait for the device
    step()                                           # warm-up (compiles the GPU kernels)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run_checks(backend, log=print):
    """All checks on one backend ("numpy" or "cupy") -> [Check]."""
    checks = []

    def record(name, passed, detail):
        checks.append(Check(name, backend, bool(passed), detail))
        log(f"  {'pass' if passed else 'FAIL'}  {name}: {detail}")

    for name in gradcheck.LAYERS:
        report = gradcheck.check_layer(name, "float64", backend)
        record(f"gradcheck {name}", report.passed, f"max rel err {report.max_rel_err:.1e}")
    model = ViT(SMALL, backend=backend, seed=0)
    report = gradcheck.check_model(model, batch_size=2, max_checks=20)
    record("gradcheck model", report.passed, f"max rel err {report.max_rel_err:.1e}")
    report = gradcheck.check_model(model, batch_size=3, max_checks=20, drop_path_seed=None,
                                   net=FastViT(model))
    record("gradcheck fast path", report.passed, f"max rel err {report.max_rel_err:.1e}")
    if backend != "numpy":
        ours, ref = _train_steps(backend), _train_steps("numpy")
        err = float(np.abs(ours - ref).max() / np.abs(ref).max())
        record("3 training steps = NumPy's", err <= STEPS_RTOL,
               f"weights differ by {err:.1e} relative (mark {STEPS_RTOL:g})")
    seconds = _step_time(backend)
    record("step time", True, f"default ViT, batch 80: {seconds * 1e3:.1f} ms/step, "
                              f"{80 / seconds:.0f} images/s")
    return checks


def selftest(backend="auto", log=print):
    """Run the checks on NumPy and on the GPU (when one is usable) -> [Check]."""
    wanted = "cupy" if backend in ("cupy", "auto") else "numpy"
    sides = ["numpy"]
    if wanted == "cupy":
        reason = gpu_unavailable_reason()
        if reason is None:
            sides.append(resolve_backend("cupy"))
        else:
            log(f"GPU side skipped: {reason}")
    checks = []
    for side in sides:
        log(f"{side}:")
        checks += run_checks(side, log)
    failed = [c for c in checks if not c.passed]
    log(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    return checks
