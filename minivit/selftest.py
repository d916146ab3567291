"""`minivit selftest`: check, on this machine, what the test suite cannot check without it.

CI has no GPU. It runs the CuPy path on a strict stand-in that enforces CuPy's rules, and
replays every device operation through real CuPy's type rules, code generator and
compiler (tests/cupy_real.py): that proves the GPU code is built as intended, in the
run's dtype. It cannot prove what only a GPU shows: CUDA's numbers, memory and speed.
On a machine with a GPU, this command checks those:

1. every layer's backward against finite differences, in float64, on the backend;
2. the whole model's gradient, and the fast path's, in float64;
3. three training steps on the backend against the same steps on NumPy: float64 (the
   weights agree to 1e-9 relative) and float32 (to 1e-3: the GPU sums in another order)
   with AdamW, EMA, clipping, drop path, a conv stem and a low-resolution batch;
4. the loader's batches (crop and flip, RandAugment) and the batch regularizers (random
   erasing, mixup, cutmix) against NumPy's from the same seeds;
5. one training step of the default ViT at batch 80: the first step's time (on a GPU it
   compiles the kernels, once per machine: CuPy caches them on disk) apart from the
   steady step time.

Every check reports pass or FAIL (an error inside a check is a FAIL naming it, never a
traceback), and the last line is the verdict. Without a GPU it runs the NumPy side and
says why the GPU side was skipped (`--backend auto`), or fails saying why (`--backend cupy`).
"""

import time
from dataclasses import dataclass

import numpy as np

from .augment import regularize
from .config import TrainConfig
from .data import Loader
from .engine import gradcheck, resize
from .engine.backend import get_xp, gpu_unavailable_reason, resolve_backend, to_host
from .engine.config import ViTConfig
from .engine.draws import StepDraws
from .engine.model import ViT
from .engine.optim import EMA, clip_grad_norm
from .fast import FastRunner
from .fast.loss import cross_entropy
from .run import make_optimizer

SMALL = ViTConfig(img_size=8, patch_size=4, embed_dim=12, depth=2, num_heads=3, mlp_ratio=2.0,
                  num_classes=5, dtype="float64")
STEPS_RTOL = {"float64": 1e-9, "float32": 1e-3}
# float32 training variants: what the presets train, three steps each
VARIANTS = {"AdamW, EMA, clipping, drop path": {},
            "conv stem": dict(stem_channels=4),
            "low-resolution batch": dict(low_res_side=4),
            "Muon": dict(stem_channels=4, optimizer="muon"),
            "sequence pooling": dict(pool="seq")}
LOADER_ATOL = 1e-4


@dataclass
class Check:
    name: str
    backend: str
    passed: bool
    detail: str


def _train_steps(backend, dtype="float64", steps=3, batch=6, low_res_side=None, **overrides):
    """Flat weights and EMA weights after `steps` AdamW steps (clipping, drop path, label
    smoothing) of a small ViT on fixed batches."""
    cfg = TrainConfig.from_preset("default", **{**SMALL.__dict__, "dtype": dtype, "drop_path": 0.3,
                                                **overrides})
    model = ViT(cfg.model_config(), backend=backend, seed=1)
    net, opt, ema = FastRunner(model), make_optimizer(cfg, model), EMA(model, 0.9)
    rng = np.random.default_rng(0)
    for step in range(steps):
        x = model.xp.asarray(rng.standard_normal((batch, 3, SMALL.img_size, SMALL.img_size)).astype(dtype))
        if low_res_side:
            x, _ = resize.area_resize_forward(x, low_res_side)
        y = model.xp.asarray(rng.integers(0, SMALL.num_classes, batch))
        draws = StepDraws.sample(cfg, batch, np.random.default_rng(step), model.xp, model.dtype)
        logits = net.forward(x, draws=draws)
        loss, dlogits = cross_entropy(logits, y, cfg.label_smoothing)
        model.zero_grad()
        net.backward(dlogits, need_dx=False)
        clip_grad_norm(model.parameters(), cfg.clip_grad)
        opt.step()
        ema.update()
    return np.concatenate([to_host(model.flat_params), to_host(ema.shadow)])


def _relative_error(ours, ref):
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def _batches(backend):
    """Host copies of two loader batches (crop + flip, RandAugment) and the batch
    regularizers (erasing, mixup / cutmix) on them, from fixed seeds."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, 12)
    cfg = TrainConfig.from_preset("default", random_erase=0.5, mixup=0.8, cutmix=1.0)
    loader = Loader(x, y, 6, get_xp(backend), [0.5] * 3, [0.25] * 3, shuffle=True, augment=True,
                    randaugment=(2, 9.0), seed=3)
    out = []
    for i, (images, labels) in enumerate(loader.batches(1)):
        images, targets = regularize(cfg, images, labels, 1, i)
        out += [to_host(images), to_host(targets)]
    return out


def _step_times(backend, batch=80, repeats=3):
    """(seconds of the first step, median seconds of the next ones) of one training step
    of the default ViT (float32) at batch 80."""
    cfg = TrainConfig.from_preset("default")
    model = ViT(cfg.model_config(), backend=backend)
    net, opt = FastRunner(model), make_optimizer(cfg, model)
    xp = model.xp
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32))
    y = xp.asarray(rng.integers(0, 10, batch))

    def step():
        t0 = time.perf_counter()
        loss, dlogits = cross_entropy(net.forward(x), y, cfg.label_smoothing)
        model.zero_grad()
        net.backward(dlogits, need_dx=False)
        clip_grad_norm(model.parameters(), cfg.clip_grad)
        opt.step()
        float(loss)                                  # wait for the device
        return time.perf_counter() - t0
    first = step()
    return first, float(np.median([step() for _ in range(repeats)]))


def run_checks(backend, log=print):
    """All checks on one backend ("numpy" or "cupy") -> [Check]."""
    checks = []

    def check(name, run):
        """run() -> (passed, detail); an exception is a failed check that names it."""
        try:
            passed, detail = run()
        except Exception as e:                      # a GPU fault must end in a verdict
            passed, detail = False, f"raised {type(e).__name__}: {e}"
        checks.append(Check(name, backend, bool(passed), detail))
        log(f"  {'pass' if passed else 'FAIL'}  {name}: {detail}")

    def rel_err_check(ours, ref, mark):
        err = _relative_error(ours, ref)
        return err <= mark, f"differ by {err:.1e} relative (mark {mark:g})"

    for name in gradcheck.LAYERS:
        check(f"gradcheck {name}", lambda: (lambda r: (r.passed, f"max rel err {r.max_rel_err:.1e}"))(
            gradcheck.check_layer(name, "float64", backend)))
    check("gradcheck model", lambda: (lambda r: (r.passed, f"max rel err {r.max_rel_err:.1e}"))(
        gradcheck.check_model(ViT(SMALL, backend=backend, seed=0), batch_size=2, max_checks=20)))

    def fast_path():
        model = ViT(SMALL, backend=backend, seed=0)
        r = gradcheck.check_model(model, batch_size=3, max_checks=20, net=FastRunner(model))
        return r.passed, f"max rel err {r.max_rel_err:.1e}"
    check("gradcheck fast path", fast_path)
    if backend != "numpy":
        check("3 float64 training steps = NumPy's", lambda: rel_err_check(
            _train_steps(backend), _train_steps("numpy"), STEPS_RTOL["float64"]))
        for variant, overrides in VARIANTS.items():
            check(f"3 float32 steps = NumPy's ({variant})", lambda o=overrides: rel_err_check(
                _train_steps(backend, "float32", **o), _train_steps("numpy", "float32", **o),
                STEPS_RTOL["float32"]))

        def loader():
            ours, ref = _batches(backend), _batches("numpy")
            err = max(float(np.abs(a - b).max()) for a, b in zip(ours, ref))
            return err <= LOADER_ATOL, f"batches differ by {err:.1e} at most (mark {LOADER_ATOL:g})"
        check("loader, augmentation and regularizers = NumPy's", loader)

    def step_time():
        first, steady = _step_times(backend)
        compiles = " (it compiles the GPU kernels)" if backend != "numpy" else ""
        return True, (f"default ViT, batch 80: first step {first:.2f} s{compiles}, "
                      f"then {steady * 1e3:.1f} ms/step, {80 / steady:.0f} images/s")
    check("step time", step_time)
    return checks


def selftest(backend="auto", log=print):
    """Run the checks on NumPy and on the GPU (when one is usable) -> [Check]. The last
    line logged is the verdict."""
    wanted = "cupy" if backend in ("cupy", "auto") else "numpy"
    sides, checks = ["numpy"], []
    if wanted == "cupy":
        reason = gpu_unavailable_reason()
        if reason is None:
            sides.append(resolve_backend("cupy"))
        elif backend == "cupy":                  # asked for the GPU by name: its absence fails
            log(f"GPU side not run: {reason}")
            checks.append(Check("GPU usable", "cupy", False, reason))
        else:
            log(f"GPU side skipped: {reason}")
    for side in sides:
        log(f"{side}:")
        checks += run_checks(side, log)
    failed = [c for c in checks if not c.passed]
    log(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    if failed:
        log(f"verdict: FAILED on {', '.join(sorted({c.backend for c in failed}))}: "
            + "; ".join(f"{c.backend} {c.name}" for c in failed))
    else:
        log(f"verdict: every check passed on {' and '.join(sides)}"
            + ("" if "cupy" in sides or wanted == "numpy" else " (the GPU side was skipped)"))
    return checks
