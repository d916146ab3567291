"""Device operations (about one kernel launch each) and host syncs per training step on
the CuPy path, counted without a GPU.

    python benchmarks/launch_count.py               # default, seed and hybrid presets, batch 80
    python benchmarks/launch_count.py --torch       # + PyTorch eager's kernel count

On a GPU each CuPy operation costs 5-20 us of Python and launch overhead, while the
default ViT's arithmetic at batch 80 takes about a millisecond, so the number of
operations per step is what decides the GPU step time. The strict CuPy stand-in of the
test suite (tests/cupy_strict.py) runs the step exactly as the training loop does and
counts: each kernel, each host -> device copy, and each read of device data on the host
(a sync, which makes the host wait for the GPU), by real CuPy 14's rules where one call
is several kernels (operands copied before a batched matmul, two-kernel CUB sums; see
cupy_strict.extra_launches). The loader's batch (gather, normalize, the preset's
augmentation) and the EMA update count too. `--torch` counts the kernels PyTorch
dispatches for the same step (eager mode, multi-tensor AdamW as on CUDA), by recording
every ATen operation that computes (views excluded).
"""

import argparse
import dataclasses
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import minivit  # noqa: E402
from minivit.config import TrainConfig  # noqa: E402
from minivit.engine.optim import clip_grad_norm  # noqa: E402
from minivit.guards import NonFiniteGuard  # noqa: E402
from minivit.run import make_net, make_optimizer, training_loader  # noqa: E402

PHASES = ("loader", "forward", "loss", "backward", "grad norm", "nan check", "clip", "optimizer", "ema")


def install_stand_in():
    """Make minivit use the strict CuPy stand-in as CuPy (for this process)."""
    import cupy_strict

    class Setter:
        setattr = staticmethod(setattr)
    return cupy_strict.install(Setter)


def count_step(cp, config, batch=80, steps=2, preset="default"):
    """{phase: (ops, syncs)} of the last of `steps` training steps of a ViT with config,
    on the stand-in cp, with the recipe of `preset` (loader augmentation, optimizer,
    clipping, smoothing, EMA), as the training loop runs it."""
    import cupy_strict
    from minivit.engine.optim import EMA, grad_norm_squared
    cfg = TrainConfig.from_preset(preset)
    model = minivit.ViT(config, backend="cupy")
    net, cross_entropy = make_net(cfg, model)     # the fast path and its fused loss
    opt = make_optimizer(cfg, model)
    ema = EMA(model, cfg.ema) if cfg.ema else None
    guard = NonFiniteGuard(model, steps_per_epoch=steps)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (batch * (steps + 1), config.in_chans, config.img_size, config.img_size),
                          dtype=np.uint8)
    loader = training_loader(dataclasses.replace(cfg, batch_size=batch, dtype=config.dtype), pixels,
                             rng.integers(0, config.num_classes, len(pixels)), cp,
                             [0.5] * config.in_chans, [0.25] * config.in_chans)
    batches = loader.batches(1)
    counts = {}

    def phase(name, run):
        before = cupy_strict.COUNTS.snapshot()
        out = run()
        after = cupy_strict.COUNTS.snapshot()
        counts[name] = (after[0] - before[0], after[1] - before[1])
        return out

    for step in range(1, steps + 1):
        x, y = phase("loader", lambda: next(batches))
        logits = phase("forward", lambda: net.forward(x))
        loss, dlogits = phase("loss", lambda: cross_entropy(logits, y, cfg.label_smoothing))
        phase("backward", lambda: (model.zero_grad(), net.backward(dlogits, need_dx=False)))
        sum_sq = phase("grad norm", lambda: grad_norm_squared(model.parameters()))
        ok = phase("nan check", lambda: guard.watch(step, loss, sum_sq))
        phase("clip", lambda: clip_grad_norm(model.parameters(), cfg.clip_grad, sum_sq) if cfg.clip_grad else None)
        phase("optimizer", lambda: opt.step(ok))
        phase("ema", lambda: ema.update() if ema is not None else None)
    return counts


def torch_kernels(config, batch=80, preset="default"):
    """{phase: kernels} PyTorch eager dispatches for the same step (CPU, counted at the
    ATen level: every operation that computes; views and metadata excluded)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch_simplevit import SimpleViT
    cfg = TrainConfig.from_preset(preset)
    views = {"view", "_unsafe_view", "t", "transpose", "permute", "expand", "as_strided", "unsqueeze",
             "squeeze", "slice", "select", "detach", "alias", "reshape", "unbind", "split",
             "split_with_sizes", "chunk", "_reshape_alias", "lift_fresh", "empty", "empty_like",
             "empty_strided", "new_empty", "new_empty_strided"}

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__.split(".")[0] not in views:
                self.n += 1
            return func(*args, **(kwargs or {}))

    model = SimpleViT(img_size=config.img_size, patch_size=config.patch_size, embed_dim=config.embed_dim,
                      depth=config.depth, num_heads=config.num_heads, num_classes=config.num_classes)
    optim = (torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
             if cfg.optimizer == "adamw" else torch.optim.Adam(model.parameters(), lr=cfg.lr, foreach=True))
    x = torch.randn(batch, config.in_chans, config.img_size, config.img_size)
    y = torch.randint(0, config.num_classes, (batch,))
    counts = {}
    for _ in range(2):
        with Count() as c:
            loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
        counts["forward + loss"] = c.n
        with Count() as c:
            optim.zero_grad()
            loss.backward()
        counts["backward"] = c.n
        with Count() as c:
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad, foreach=True)
        counts["clip"] = c.n
        with Count() as c:
            optim.step()
        counts["optimizer"] = c.n
    return counts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=80)
    ap.add_argument("--torch", action="store_true", help="also count PyTorch eager's kernels")
    args = ap.parse_args(argv)
    cp = install_stand_in()
    for preset in ("default", "seed", "hybrid"):
        cfg = TrainConfig.from_preset(preset)
        config = cfg.model_config()
        counts = count_step(cp, config, batch=args.batch_size, preset=preset)
        print(f"{preset} preset: ViT dim {config.embed_dim}, depth {config.depth}, "
              f"{config.num_heads} heads, batch {args.batch_size}, {cfg.optimizer}"
              f"{', clip' if cfg.clip_grad else ''}")
        for name in PHASES:
            ops, syncs = counts[name]
            print(f"  {name:<10s} {ops:5d} launches  {syncs:3d} syncs")
        print(f"  {'step':<10s} {sum(o for o, _ in counts.values()):5d} launches  "
              f"{sum(s for _, s in counts.values()):3d} syncs")
        if args.torch:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            t = torch_kernels(config, args.batch_size, preset)
            print("  PyTorch eager: " + ", ".join(f"{k} {v}" for k, v in t.items())
                  + f"; step {sum(t.values())} kernels")


if __name__ == "__main__":
    main()
