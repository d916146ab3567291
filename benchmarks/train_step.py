"""Time one full training step (forward, cross-entropy, backward, Adam) of the ViT.

    python benchmarks/train_step.py                      # default model, batch 80, NumPy
    python benchmarks/train_step.py --backend cupy --batch-size 512

Prints images/second for minivit on the chosen backend and, when torch is installed,
for the same model in PyTorch (benchmarks/torch_simplevit.py) on the same shapes, in the
same process, with the ratio. Each side is warmed up first; on the GPU the device is
synchronized before the clock is read.
"""

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minivit  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="numpy", choices=["numpy", "cupy", "auto"])
    ap.add_argument("--batch-size", type=int, default=80)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per side (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--patch-size", type=int, default=4)
    ap.add_argument("--embed-dim", type=int, default=192)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--num-heads", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    args = ap.parse_args(argv)
    for name in ("batch_size", "steps", "warmup"):
        if getattr(args, name) < (1 if name != "warmup" else 0):
            ap.error(f"--{name.replace('_', '-')} must be positive")
    return args


def model_config(args):
    return dict(img_size=args.img_size, patch_size=args.patch_size, embed_dim=args.embed_dim,
                depth=args.depth, num_heads=args.num_heads, num_classes=10)


def time_steps(step, sync, steps, warmup):
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t0) / steps


def bench_minivit(args, x_host, y_host):
    model = minivit.ViT(**model_config(args), dtype=args.dtype, backend=args.backend)
    xp = model.xp
    x, y = xp.asarray(x_host, dtype=model.dtype), xp.asarray(y_host)
    opt = minivit.Adam(model.parameters(), lr=3e-4)

    def step():
        logits = model.forward(x)
        _, dlogits = minivit.cross_entropy(logits, y)
        model.zero_grad()
        model.backward(dlogits)
        opt.step()

    def sync():
        if xp is not np:
            xp.cuda.Device().synchronize()

    return model, time_steps(step, sync, args.steps, args.warmup)


def bench_torch(args, x_host, y_host, device):
    import torch
    from torch_simplevit import SimpleViT
    dtype = torch.float32 if args.dtype == "float32" else torch.float64
    model = SimpleViT(**model_config(args)).to(device=device, dtype=dtype)
    x = torch.from_numpy(x_host).to(device=device, dtype=dtype)
    y = torch.from_numpy(y_host).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    return time_steps(step, sync, args.steps, args.warmup), torch


def main(argv=None):
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    B = args.batch_size
    x = rng.standard_normal((B, 3, args.img_size, args.img_size)).astype(np.float32)
    y = rng.integers(0, 10, B)
    model, t_mini = bench_minivit(args, x, y)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"NumPy {np.__version__}")
    print(f"model: {model!r}")
    print(f"batch {B}, {args.dtype}, {args.steps} timed steps after {args.warmup} warm-up")
    ips_mini = B / t_mini
    print(f"minivit ({model.backend}): {t_mini * 1e3:8.1f} ms/step  {ips_mini:8.1f} images/s")
    if args.no_torch:
        return
    try:
        import torch  # noqa: F401
    except ImportError:
        print("torch: not installed, comparison skipped (pip install torch to add it)")
        return
    device = "cuda" if model.backend == "cupy" else "cpu"
    t_torch, torch = bench_torch(args, x, y, device)
    ips_torch = B / t_torch
    print(f"torch {torch.__version__} ({device}, {torch.get_num_threads()} threads): "
          f"{t_torch * 1e3:8.1f} ms/step  {ips_torch:8.1f} images/s")
    print(f"ratio minivit / torch: {ips_mini / ips_torch:.2f}")


if __name__ == "__main__":
    main()
