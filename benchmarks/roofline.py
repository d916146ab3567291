"""How close a training step comes to the machine's matrix-multiply speed (its roofline).

    python benchmarks/roofline.py                        # hybrid preset, batch 128, 16/24/32px
    python benchmarks/roofline.py --preset default --batch-size 80 --sizes 32

A ViT's step is mostly matrix products; everything else (LayerNorm, softmax, GELU, the
residuals, the optimizer's elementwise work, copies) moves memory. For each image size:

- **matmul GFLOP per step**: counted, not estimated: the step (forward, cross-entropy,
  backward, the preset's optimizer) runs on the strict CuPy stand-in of the tests (a first
  step sets the optimizer up, the second is counted), which adds up 2 m k n for every
  product it performs (the same code as on NumPy, Muon with NumPy's one stack a shape;
  only the cutting of the batch into shards differs, which changes no product's total);
- **step ms**: the same step on NumPy, as training runs it (FastRunner's shards in
  threads), the median of --rounds rounds of --steps steps after a warm-up;
- **roofline**: the GEMM reference of every time-budget run (threads.gemm_gflops: a
  float32 1024 x 1024 product on NumPy's BLAS, GFLOP/s, measured before each size) ->
  **fraction** = (matmul FLOPs / GEMM rate) / step time, the share of the step a machine
  doing nothing but large products at full speed would need;
- **GEMMs alone**: the step's own products (the shapes recorded on the stand-in), timed
  by themselves on NumPy's BLAS (all threads, one after the other): what these shapes
  reach at best, so the step's time splits into "the products are small" and "the rest";
  with --torch, the same products on PyTorch's CPU matmul too (its BLAS against NumPy's).

The loader's batch, its augmentation and the resizing to the stage's size are not part
of the step timed here (the training log's images/s include them).
"""

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import minivit  # noqa: E402
from minivit.config import PRESETS, TrainConfig  # noqa: E402
from minivit.engine.config import POOLS  # noqa: E402
from minivit.fast.threads import cpu_threads, gemm_gflops, tune_host_allocator  # noqa: E402
from minivit.run import make_net, make_optimizer  # noqa: E402
from train_step import timer  # noqa: E402  (benchmarks/, this script's folder, is on sys.path)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="hybrid", choices=list(PRESETS))
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--sizes", type=int, nargs="+", default=None,
                    help="image sides to time (default: the preset's stages, e.g. 16 24 32)")
    ap.add_argument("--pool", default=None, choices=POOLS, help="override the preset's pooling")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per round (default 5)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per size (default 3)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--embed-dim", type=int, default=None, help="override the preset's width")
    ap.add_argument("--depth", type=int, default=None, help="override the preset's depth")
    ap.add_argument("--torch", action="store_true", help="also time the same products on "
                    "PyTorch's CPU matmul (needs torch)")
    args = ap.parse_args(argv)
    if args.torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            ap.error("--torch needs PyTorch (pip install torch), or leave --torch out")
    for name in ("batch_size", "steps", "rounds", "warmup"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            ap.error(f"--{name.replace('_', '-')} must be positive")
    return args


def train_config(args):
    overrides = {k: v for k, v in (("pool", args.pool), ("embed_dim", args.embed_dim),
                                   ("depth", args.depth)) if v is not None}
    return TrainConfig.from_preset(args.preset, **overrides)


def stage_sizes(cfg):
    sizes = [s for s, share in ((cfg.low_res_size, cfg.low_res), (cfg.mid_res_size, cfg.mid_res)) if share]
    return sizes + [cfg.model_config().img_size]


def make_step(cfg, backend, batch, side, seed=0, stacked=None):
    """-> (model_pass, optimizer_step): one training step of cfg's model and optimizer on a
    fixed batch of side x side images, as the training loop runs it (forward,
    cross-entropy, backward without the image gradient; then the optimizer). stacked:
    make_optimizer's (Muon's one padded stack; default: on the GPU only)."""
    model = minivit.ViT(cfg.model_config(), backend=backend, seed=seed)
    (net, cross_entropy), opt = make_net(cfg, model), make_optimizer(cfg, model, stacked)
    rng = np.random.default_rng(seed)
    x = model.xp.asarray(rng.standard_normal((batch, 3, side, side)).astype(model.dtype))
    y = model.xp.asarray(rng.integers(0, model.config.num_classes, batch))

    def model_pass():
        logits = net.forward(x)
        _, dlogits = cross_entropy(logits, y, cfg.label_smoothing)
        model.zero_grad()
        net.backward(dlogits, need_dx=False)
    return model_pass, opt.step


def count_flops(cfg, batch, side):
    """-> (model FLOPs, optimizer FLOPs, [(a shape, b shape) of every product]) of one
    step, run on the stand-in with the CPU's schedule (Muon one stack a shape, as NumPy
    runs it, not the GPU's one padded stack, whose zeros would count as work)."""
    import cupy_strict
    from launch_count import install_stand_in
    install_stand_in()
    model_pass, optimizer_step = make_step(cfg, "cupy", batch, side, stacked=False)
    model_pass(), optimizer_step()                 # the first step sets the optimizer up
    flops, shapes = [], []
    for run in (model_pass, optimizer_step):
        cupy_strict.COUNTS.reset()
        run()
        flops.append(cupy_strict.COUNTS.matmul_flops)
        shapes += cupy_strict.COUNTS.matmul_shapes
    return flops[0], flops[1], shapes


def time_rounds(fn, steps, rounds, warmup):
    """Seconds per call of fn: the median of `rounds` rounds of `steps` calls, after
    `warmup` calls (train_step.timer, with nothing to wait for on NumPy)."""
    time_round = timer(fn, lambda: None, steps, warmup)
    return float(np.median([time_round() for _ in range(rounds)]))


def time_gemms(shapes, steps, rounds, dtype, library="numpy"):
    """Seconds for the recorded products, run by themselves (fresh operands) on NumPy's
    BLAS, or with library="torch" on PyTorch's CPU matmul (the same shapes, its own BLAS
    and threads): how fast these products can be on this machine, whoever runs them."""
    rng = np.random.default_rng(0)
    pairs = [(rng.standard_normal(a).astype(dtype), rng.standard_normal(b).astype(dtype)) for a, b in shapes]
    matmul = np.matmul
    if library == "torch":
        import torch
        pairs = [(torch.from_numpy(a), torch.from_numpy(b)) for a, b in pairs]
        matmul = torch.matmul

    def run():
        for a, b in pairs:
            matmul(a, b)
    return time_rounds(run, steps, rounds, warmup=1)


def main(argv=None):
    args = parse_args(argv)
    tune_host_allocator()
    cfg = train_config(args)
    c = cfg.model_config()
    sizes = args.sizes or stage_sizes(cfg)
    torch_note = ""
    if args.torch:
        import torch
        torch_note = f"; PyTorch {torch.__version__}, {torch.get_num_threads()} threads"
    print(f"preset {args.preset}: ViT dim {c.embed_dim}, depth {c.depth}, {c.num_heads} heads, "
          f"stem {c.stem_channels or 'none'}, pool {c.pool}, {cfg.optimizer}; batch {args.batch_size}, "
          f"{c.dtype}, NumPy, {cpu_threads()} threads{torch_note}")
    print(f"{'side':>4} {'tokens':>6} {'model GFLOP':>11} {'opt GFLOP':>9} {'step ms':>8} "
          f"{'img/s':>7} {'GFLOP/s':>7} {'GEMM ref':>8} {'fraction':>8} {'GEMMs alone ms':>14} "
          f"{'their share':>11}" + (f" {'torch GEMMs ms':>14}" if args.torch else ""))
    for side in sizes:
        model_flops, opt_flops, shapes = count_flops(cfg, args.batch_size, side)
        model_pass, optimizer_step = make_step(cfg, "numpy", args.batch_size, side)
        ref = gemm_gflops()
        seconds = time_rounds(lambda: (model_pass(), optimizer_step()), args.steps, args.rounds,
                              args.warmup)
        gemms = time_gemms(shapes, args.steps, args.rounds, c.dtype)
        torch_gemms = time_gemms(shapes, args.steps, args.rounds, c.dtype, "torch") if args.torch else None
        flops = model_flops + opt_flops
        print(f"{side:>4} {(side // c.side_unit) ** 2 + 1:>6} {model_flops / 1e9:>11.3f} "
              f"{opt_flops / 1e9:>9.3f} {1e3 * seconds:>8.1f} {args.batch_size / seconds:>7.1f} "
              f"{flops / seconds / 1e9:>7.1f} {ref:>8.1f} {flops / (ref * 1e9) / seconds:>8.2f} "
              f"{1e3 * gemms:>14.1f} {gemms / seconds:>11.2f}"
              + (f" {1e3 * torch_gemms:>14.1f}" if args.torch else ""))


if __name__ == "__main__":
    main()
