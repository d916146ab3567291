"""Real CuPy, no GPU: every device operation the CuPy path performs, recorded on the strict
stand-in, is replayed through real CuPy's type rules, fusion code generator and NVRTC
(tests/cupy_real.py). A kernel real CuPy cannot build, float16 in generated code, a
dtype other than the run's, or a compile error fails the test that ran it.

The planted-bug tests put back, one at a time, the defects this check was written to
catch (an operation between two Python numbers inside a fused kernel, typed float16 by
CuPy; a Python number as Adam's `ok`; a float64 scalar that promotes a float32 run) and
show that the check fails on each.
"""

import os

import numpy as np
import pytest

from minivit import cli, fast
from minivit.config import TrainConfig
from minivit.engine import gradcheck, optim
from minivit.fast import runner

if os.environ.get("CI"):
    import cupy  # noqa: F401  (CI installs CuPy with its compiler: this check never skips there)
else:
    pytest.importorskip("cupy", reason="real CuPy is not installed: pip install -e .[test]")
cupy_real = pytest.importorskip("cupy_real")
import cupy_strict  # noqa: E402
from helpers import plant  # noqa: E402

SMALL = dict(embed_dim=16, depth=2, num_heads=2, batch_size=16, limit_train=160, epochs=1)
RUNS = {
    # every regularizer, AdamW with a per-parameter decay, EMA, clipping: float32
    "adamw-regularizers-f32": dict(drop_path=0.1, mixup=0.5, cutmix=0.5, random_erase=0.5,
                                   randaugment=2, ema=0.999),
    # plain Adam (the L2 decay in the gradient), float64
    "adam-f64": dict(optimizer="adam", dtype="float64", augment=False, clip_grad=0.0),
    # the hybrid's parts: a two-conv stem, progressive resizing, mean pooling, tanh GELU
    "stem-lowres-meanpool-f32": dict(stem_channels=8, stem_layers=2, low_res=0.5,
                                     low_res_size=16, pool="mean", gelu="tanh"),
    # Muon, a whitened stem, three image sizes (16, 24, 32), sequence pooling, alternating flip
    "muon-whiten-midres-seqpool-f32": dict(optimizer="muon", stem_channels=8, stem_init="whiten",
                                           low_res=0.3, low_res_size=16, mid_res=0.3,
                                           mid_res_size=24, pool="seq", alternate_flip=True),
    # RMSNorm through the fast path (the engine's own RMSNorm inside it)
    "rmsnorm-f32": dict(norm="rmsnorm", drop_path=0.1),
    # the engine itself (--engine reference): its loss, its Muon, RMSNorm, drop path, a stem
    "reference-engine-muon-rmsnorm-f32": dict(engine="reference", optimizer="muon", norm="rmsnorm",
                                              drop_path=0.1, stem_channels=8, low_res=0.5,
                                              low_res_size=16),
}


def _check(ops, dtype):
    problems, counts = cupy_real.check(ops, dtype)
    assert counts["fuse"] > 0, "nothing was fused: the recording is empty"
    assert not problems, "\n".join(problems)
    return counts


@pytest.fixture
def check_records(monkeypatch):
    """The fast path's check against the engine, which a fast run (and eval) makes first,
    runs on a float64 copy of the model: its device operations are recorded apart, to be
    replayed as float64, not as the run's own dtype."""
    records = []
    real = fast.check_against_engine

    def recorded(*args, **kwargs):
        with cupy_strict.recording() as ops:
            result = real(*args, **kwargs)
        records.extend(ops)
        return result
    monkeypatch.setattr(fast, "check_against_engine", recorded)
    return records


def _train(tmp_path, overrides):
    from minivit.train import train
    cfg = TrainConfig.from_preset("sample", **{**SMALL, **overrides})
    train(cfg, out=tmp_path / "run", backend="cupy", progress=False, plots=False,
          log=lambda *a: None)
    return cfg


@pytest.mark.parametrize("name", sorted(RUNS))
def test_training_runs_build_on_real_cupy(name, cupy_strict_module, check_records, tmp_path):
    with cupy_strict.recording() as ops:
        cfg = _train(tmp_path, RUNS[name])
    _check(ops, cfg.dtype)
    if cfg.engine == "fast":                       # a reference run makes no check
        _check(check_records, "float64")
    else:
        assert not check_records


# the GPU's own kernels (fast/runner.py's GPU schedule, fast.Muon's stack, the fused loss's
# class-label kernel): each must be among those a training run built
GPU_SCHEDULE_KERNELS = {
    "layernorm_backward_rows", "layernorm_backward_dx_slots", "layernorm_backward_dx_slots_rows",
    "scaled_exp_into", "attention_backward_do", "softmax_backward_ds_into", "qkv_gradient_into",
    "softmax_cross_entropy_labels", "stacked_nesterov", "frobenius_normalize",
    "newton_schulz_polynomial", "newton_schulz_step", "muon_apply_flat"}


def test_every_kernel_of_the_gpus_schedule_builds_on_real_cupy(cupy_strict_module, check_records,
                                                               tmp_path):
    """A run with Muon, the class-token-only last block and class labels goes through
    every kernel of GPU_SCHEDULE_KERNELS, and real CuPy builds them all."""
    from minivit.train import train
    cfg = TrainConfig.from_preset("sample", **{**SMALL, "optimizer": "muon", "mixup": 0.0, "cutmix": 0.0})
    with cupy_strict.recording() as ops:
        train(cfg, out=tmp_path / "run", backend="cupy", progress=False, plots=False,
              log=lambda *a: None)
    built = {r.name for r in ops if r.kind == "fuse"}
    assert GPU_SCHEDULE_KERNELS <= built, sorted(GPU_SCHEDULE_KERNELS - built)
    _check(ops, "float32")
    _check(check_records, "float64")


def test_eval_predict_attention_and_gradcheck_build_on_real_cupy(cupy_strict_module, check_records,
                                                                 tmp_path, capsys):
    from PIL import Image
    from minivit import data
    _train(tmp_path, {})
    ckpt = str(tmp_path / "run" / "best.npz")
    image = tmp_path / "img.png"
    Image.fromarray(data.load_cifar10(data.SAMPLE_FOLDER)["x_test"][0].transpose(1, 2, 0)).save(image)
    on = ["--backend", "cupy"]
    with cupy_strict.recording() as ops:
        assert cli.main(["eval", "--checkpoint", ckpt, "--flip", *on]) == 0
        assert cli.main(["eval", "--checkpoint", ckpt, "--crops", *on]) == 0
        assert cli.main(["predict", "--checkpoint", ckpt, str(image), *on]) == 0
        assert cli.main(["attention", "--checkpoint", ckpt, "--out", str(tmp_path / "a.png"), *on]) == 0
    _check(ops, "float32")
    _check(check_records, "float64")
    with cupy_strict.recording() as ops:                   # float64 throughout
        for layer in gradcheck.LAYERS:
            assert gradcheck.check_layer(layer, "float64", "cupy", max_checks=4).passed
        assert cli.main(["gradcheck", "--model", "--max-checks", "3", *on]) == 0
    _check(ops, "float64")


def test_selftest_builds_on_real_cupy(cupy_strict_module, capsys, monkeypatch):
    from minivit import selftest
    timed = selftest._step_times                   # the default ViT, at a batch that runs fast here
    monkeypatch.setattr(selftest, "_step_times", lambda backend: timed(backend, batch=8, repeats=1))
    with cupy_strict.recording() as ops:
        assert cli.main(["selftest", "--backend", "cupy"]) == 0
    _check(ops, None)                   # float64 checks and float32 steps, each typed as run


def _adamw_and_ema_records():
    """The optimizer's and EMA's device operations for a few float32 steps."""
    import minivit
    model = minivit.ViT(img_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=2,
                        num_classes=3, backend="cupy")
    opt = optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    ema = optim.EMA(model, 0.9999)
    with cupy_strict.recording() as ops:
        for _ in range(2):
            opt.step()
            ema.update()
    return ops


def test_the_optimizer_and_ema_compute_in_the_run_dtype(cupy_strict_module):
    counts = _check(_adamw_and_ema_records(), "float32")
    assert counts["fuse"] == 2                     # adamw_update and _ema_update


@pytest.mark.parametrize("owner,name,old,new", [
    (optim, "_ema_update", "shadow += one_minus_d * (w - shadow)",
     "shadow += (1.0 - (1.0 - one_minus_d)) * (w - shadow)"),
    (optim, "adamw_update", "v += xp.where(ok, one_minus_b2 * (g * g - v), 0.0)",
     "v += xp.where(ok, (1.0 - (1.0 - one_minus_b2)) * (g * g - v), 0.0)"),
], ids=["ema-1-minus-d", "adamw-1-minus-b2"])
def test_a_scalar_only_term_inside_a_kernel_is_caught(cupy_strict_module, monkeypatch, owner, name, old, new):
    """Item 1 of the defects: `(1.0 - b2)` inside cupy.fuse is float16 on real CuPy."""
    plant(monkeypatch, owner, name, old, new)
    problems, _ = cupy_real.check(_adamw_and_ema_records(), "float32")
    assert any("float16" in p and name.strip("_") in p for p in problems), problems


def test_a_python_number_as_ok_is_caught(cupy_strict_module, monkeypatch):
    """Item 2: `xp.where(1.0, ...)` is rejected by real CuPy's fusion."""
    plant(monkeypatch, optim.Adam, "_device_flag", "return self._flags[ok is None or bool(ok)]", "return 1.0")
    problems, _ = cupy_real.check(_adamw_and_ema_records(), "float32")
    assert any("adamw_update" in p and "cannot build" in p for p in problems), problems


def test_a_float64_scalar_in_a_float32_run_is_caught(cupy_strict_module, check_records, monkeypatch,
                                                     tmp_path):
    plant(monkeypatch, runner, "layernorm_fused", "kernels.layernorm_apply(x, x_sum, var_sum, w, b, inv_d, eps)",
          "kernels.layernorm_apply(x, x_sum, var_sum, w, b, inv_d, np.float64(eps))")
    with cupy_strict.recording() as ops:
        _train(tmp_path, {})
    problems, _ = cupy_real.check(ops, "float32")
    assert any("layernorm_apply" in p and "float64" in p for p in problems), problems


def test_a_kernel_nvrtc_cannot_compile_is_caught():
    with pytest.raises(cupy_real.compiler.CompileException):
        cupy_real.compile_ptx('extern "C" __global__ void k(float* x) { x[0] = undefined_name; }')


def test_fake_arrays_are_real_cupy_arrays():
    import cupy
    a = cupy_real.fake_array((3, 4), np.float32)
    assert type(a) is cupy.ndarray and a.shape == (3, 4) and a.dtype == np.float32
    assert a.T.strides == (4, 16)                  # CuPy's own views, no device touched


def test_the_cupy_users_install_is_the_cupy_tested():
    """[gpu] pins the CuPy whose API snapshot and code generator the suite checks, and [full]
    (the extra the full suite installs) the same."""
    import configparser
    import json
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(os.path.dirname(__file__), "..", "..", "setup.cfg"))
    extras = cfg["options.extras_require"]
    snapshot = json.load(open(os.path.join(os.path.dirname(__file__), "..", "cupy_api", "cupy_api.json")))
    pin = f"cupy-cuda12x[ctk]=={snapshot['cupy_version']}"
    assert extras["gpu"].strip() == pin
    assert pin in extras["full"]
