"""Overfit one batch: what it proves about hand-written backward passes, and what it does not.

A ViT driven by Adam memorizes 32 fixed images within a hundred or so steps: the loss falls
from ln 10 towards zero and their accuracy reaches 100%. When it does not get there, it has
caught a backward so wrong that the model cannot learn (gradients that are zero, NaN,
exploding or pointing uphill), wrong shapes, or a broken optimizer loop (a forgotten
zero_grad or step, gradients that never reach the parameters).

It does not prove the gradients are right: a wrong gradient that still points downhill
often learns. This script shows it. It plants a bug, LayerNorm's backward without its mean
term (`- g.mean(axis=-1, keepdims=True)` dropped from layernorm_backward in
minivit/engine/layers.py), runs the same overfit, and the batch is memorized all the same.
Then the finite-difference gradient check (minivit/engine/gradcheck.py, float64) runs on
LayerNorm alone and on a small whole ViT, without the bug and with it: it passes the
correct backward and fails the planted one. Overfitting says the model can learn; only the
gradient check says its gradients are right.

    python examples/overfit_one_batch.py                    # both runs, then the checks: ~15 s on 2 CPU cores
    python examples/overfit_one_batch.py --plant-bug gelu   # GELU's backward without its x phi(x) term
    python examples/overfit_one_batch.py --plant-bug none   # the correct run alone
    python examples/overfit_one_batch.py --steps 300 --backend cupy
"""

import argparse
from unittest import mock

import numpy as np

import minivit
from minivit import data
from minivit.engine import gradcheck, layers


def layernorm_backward_without_mean_term(dy, cache):
    """layers.layernorm_backward with `- g.mean(axis=-1, keepdims=True)` dropped: the
    path through the mean mu is forgotten. dw and db stay right."""
    xhat, rstd, w = cache.xhat, cache.rstd, cache.w
    D = w.shape[0]
    dw = (dy * xhat).reshape(-1, D).sum(axis=0)
    db = dy.reshape(-1, D).sum(axis=0)
    g = dy * w
    dx = rstd * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))   # the bug: no - g.mean(...)
    return dx, dw, db


def gelu_backward_without_x_pdf_term(dy, cache):
    """layers.gelu_backward with GELU'(x) = Phi(x) + x phi(x) cut to Phi(x)."""
    return dy * cache.cdf                                              # the bug: no + x phi(x)


# --plant-bug NAME -> (what it is, the layer of gradcheck.LAYERS it breaks, a patch planting it).
# The engine looks layernorm_backward up by its global name (layers.norm_backward) and GELU's
# pair in layers.GELUS at every call, so patching these reaches the model and the checks.
BUGS = {
    "layernorm": ("LayerNorm's backward without its mean term, - g.mean(axis=-1, keepdims=True)",
                  "layernorm",
                  lambda: mock.patch.object(layers, "layernorm_backward", layernorm_backward_without_mean_term)),
    "gelu": ("GELU's backward without its x phi(x) term", "gelu",
             lambda: mock.patch.dict(layers.GELUS, {"exact": (layers.gelu_forward,
                                                              gelu_backward_without_x_pdf_term)})),
}

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--steps", type=int, default=150)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--backend", default="numpy", choices=["numpy", "cupy", "auto"])
ap.add_argument("--plant-bug", default="layernorm", choices=[*BUGS, "none"],
                help="the bug to plant in a second run and show to the gradient check "
                     "(none: the correct run alone)")
args = ap.parse_args()

d = data.load_cifar10(data.SAMPLE_FOLDER)                         # the shipped sample
mean, std = data.channel_stats(d["x_train"])


def overfit():
    """Adam on one fixed batch, from the same initial weights every time -> (loss, accuracy)."""
    model = minivit.ViT(embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0, backend=args.backend, seed=0)
    images = data.normalize(model.xp.asarray(d["x_train"][:args.batch]), mean, std)  # [B, 3, 32, 32]
    labels = model.xp.asarray(d["y_train"][:args.batch])
    optimizer = minivit.Adam(model.parameters(), lr=1e-3)
    for step in range(1, args.steps + 1):
        logits = model.forward(images)
        loss, dlogits = minivit.cross_entropy(logits, labels)
        model.zero_grad()
        model.backward(dlogits)
        optimizer.step()
        if step % 25 == 0 or step == 1:
            acc = float((logits.argmax(axis=1) == labels).mean())
            print(f"step {step:4d}  loss {float(loss):.4f}  batch accuracy {acc:.3f}")
    logits = model.forward(images)
    loss, _ = minivit.cross_entropy(logits, labels)
    loss, acc = float(loss), float((logits.argmax(axis=1) == labels).mean())
    print(f"final loss {loss:.4f}  batch accuracy {acc:.3f}  (started near ln 10 = {np.log(10):.3f})")
    return loss, acc


def gradient_checks(layer, label):
    """The layer's check and a small float64 ViT's (gradcheck.MODELS["vit"]), one line each."""
    fields, side, _, _ = gradcheck.MODELS["vit"]
    model = minivit.ViT(**fields, dtype="float64", backend="numpy", seed=0)
    x = np.random.default_rng(0).standard_normal((2, model.config.in_chans, side, side))
    reports = {f"layer {layer}": gradcheck.check_layer(layer), "a small ViT": gradcheck.check_model(model, x)}
    for name, report in reports.items():
        worst = max(report.results, key=lambda r: r.rel_err)
        failed = sum(not r.passed for r in report.results)
        print(f"   {name + ', ' + label + ':':<36s} {'pass' if report.passed else 'FAIL'}  "
              f"{failed:2d} of {len(report.results)} tensors wrong, worst rel err {worst.rel_err:.1e} "
              f"({worst.name}; pass mark {report.tol:g})")
    return reports


print(f"== 1. overfit {args.batch} images, {args.steps} steps of Adam, the correct backward")
overfit()
if args.plant_bug == "none":
    raise SystemExit

what, layer, plant = BUGS[args.plant_bug]
print(f"\n== 2. the same, with a planted bug: {what}")
with plant():
    loss, acc = overfit()
if acc == 1.0:
    print(f"-> with the bug the batch is still memorized (accuracy {acc:.3f}, loss {loss:.4f}): "
          "overfitting one batch did not catch it")
else:
    print(f"-> with the bug the batch is not memorized in {args.steps} steps (accuracy {acc:.3f}): "
          "this time overfitting noticed something")

print("\n== 3. the finite-difference gradient check (float64), without the bug and with it")
correct = gradient_checks(layer, "correct backward")
with plant():
    planted = gradient_checks(layer, "planted bug")
caught = not any(r.passed for r in planted.values())
print("-> the gradient check " + ("passes the correct backward and catches the bug"
                                  if caught and all(r.passed for r in correct.values()) else
                                  "did not tell the two apart"))
