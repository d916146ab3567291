"""Time one full training step (forward, cross-entropy, backward, Adam) of the ViT.

    python benchmarks/train_step.py                      # default model, batch 80, NumPy
    python benchmarks/train_step.py --backend cupy --batch-size 512
    python benchmarks/train_step.py --memory --scaling     # + peak memory, + tokens table

Prints images/second for minivit on the chosen backend and, when torch is installed,
for the same model in PyTorch (benchmarks/torch_simplevit.py) on the same shapes, in the
same process, with the ratio. Each side is warmed up first; on the GPU the device is
synchronized before the clock is read. The two sides take turns: --rounds rounds of
--steps steps each, so a slow spell of a shared machine hits both; the figure of each
side is its median round.
"""

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minivit  # noqa: E402
from minivit.fast import FastRunner, cross_entropy  # noqa: E402
from minivit.fast import blas  # noqa: E402
from minivit.fast.threads import gemm_gflops, tune_host_allocator  # noqa: E402


def cpu_name():
    """The CPU's model name (Linux), e.g. 'AMD EPYC' or 'Intel(R) Xeon(R) ...'."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="numpy", choices=["numpy", "cupy", "auto"])
    ap.add_argument("--batch-size", type=int, default=80)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per round (default 5)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds, the sides taking turns (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--patch-size", type=int, default=4)
    ap.add_argument("--embed-dim", type=int, default=192)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--num-heads", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    ap.add_argument("--memory", action="store_true",
                    help="also measure each side's peak memory in a fresh process")
    ap.add_argument("--scaling", action="store_true",
                    help="also time minivit at 17, 65, 257 and 1025 tokens")
    ap.add_argument("--scaling-batch", type=int, default=16)
    ap.add_argument("--probe", choices=["minivit", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for name in ("batch_size", "steps", "rounds", "warmup"):
        if getattr(args, name) < (1 if name != "warmup" else 0):
            ap.error(f"--{name.replace('_', '-')} must be positive")
    return args


def model_config(args):
    return dict(img_size=args.img_size, patch_size=args.patch_size, embed_dim=args.embed_dim,
                depth=args.depth, num_heads=args.num_heads, num_classes=10)


def timer(step, sync, steps, warmup):
    """Warm up, then return a function that times `steps` steps: seconds per step."""
    for _ in range(warmup):
        step()
    sync()

    def time_round():
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        return (time.perf_counter() - t0) / steps
    return time_round


def bench_minivit(args, x_host, y_host):
    model = minivit.ViT(**model_config(args), dtype=args.dtype, backend=args.backend)
    net = FastRunner(model)            # the training path: threads, class-token last block
    xp = model.xp
    x, y = xp.asarray(x_host, dtype=model.dtype), xp.asarray(y_host)
    opt = minivit.Adam(model.parameters(), lr=3e-4)

    def step():
        logits = net.forward(x)
        _, dlogits = cross_entropy(logits, y)    # the fused loss, as training's fast path
        model.zero_grad()
        net.backward(dlogits, need_dx=False)      # as training: the images need no gradient
        opt.step()

    def sync():
        if xp is not np:
            xp.cuda.Device().synchronize()

    return net, timer(step, sync, args.steps, args.warmup)


def bench_torch(args, x_host, y_host, device, threads=None):
    import torch
    from torch_simplevit import SimpleViT
    if threads:                           # the threads minivit has
        torch.set_num_threads(threads)
    dtype = torch.float32 if args.dtype == "float32" else torch.float64
    model = SimpleViT(**model_config(args)).to(device=device, dtype=dtype)
    x = torch.from_numpy(x_host).to(device=device, dtype=dtype)
    y = torch.from_numpy(y_host).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()                       # PyTorch's default (set_to_none=True)
        loss.backward()
        opt.step()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    return timer(step, sync, args.steps, args.warmup), torch


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes():
    """The high-water mark of this process's resident memory (VmHWM). Not ru_maxrss: on
    Linux that survives exec, so a child started by a big parent reports the parent's."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def probe_memory(args, x, y):
    """Run in a fresh process: build one side, then report how far its resident memory
    rose above the level before the first step (peak over warm-up and timed steps).
    On the GPU: the peak bytes the framework's allocator handed out."""
    args.steps, args.warmup = 2, 1
    if args.probe == "minivit":
        before = _rss_bytes()
        tune_host_allocator()
        net, time_round = bench_minivit(args, x, y)
        time_round()
        if net.model.backend == "cupy":
            print("peak", "n/a")     # CuPy's pool has no peak counter; measured by nvidia-smi
            return
    else:
        import torch
        before = _rss_bytes()
        time_round, _ = bench_torch(args, x, y, "cuda" if args.backend == "cupy" else "cpu")
        time_round()
        if args.backend == "cupy":
            print("peak", torch.cuda.max_memory_allocated())
            return
    print("peak", _peak_rss_bytes() - before)


def measure_memory(args, sides):
    import subprocess
    base = [sys.executable, os.path.abspath(__file__), "--backend", args.backend,
            "--batch-size", str(args.batch_size), "--dtype", args.dtype, "--img-size", str(args.img_size),
            "--patch-size", str(args.patch_size), "--embed-dim", str(args.embed_dim),
            "--depth", str(args.depth), "--num-heads", str(args.num_heads)]
    for side in sides:
        out = subprocess.run(base + ["--probe", side], capture_output=True, text=True, check=True).stdout
        value = out.split("peak")[-1].strip()
        shown = value if not value.isdigit() else f"{int(value) / 2**20:.0f} MiB"
        print(f"peak memory {side}: {shown} (resident memory above the level before the first step)")


def scaling_table(args):
    print(f"\nstep time against tokens (minivit, batch {args.scaling_batch}, "
          f"dim {args.embed_dim}, depth {args.depth}):")
    print(f"{'image':>6} {'patch':>6} {'tokens':>7} {'ms/step':>9} {'ms/step/token':>14}")
    for img, patch in ((32, 8), (32, 4), (32, 2), (64, 2)):
        sub = argparse.Namespace(**{**vars(args), "img_size": img, "patch_size": patch,
                                    "steps": 2, "warmup": 1})
        rng = np.random.default_rng(0)
        x = rng.standard_normal((args.scaling_batch, 3, img, img)).astype(np.float32)
        y = rng.integers(0, 10, args.scaling_batch)
        _, time_round = bench_minivit(sub, x, y)
        t = time_round()
        tokens = (img // patch) ** 2 + 1
        print(f"{img:>6} {patch:>6} {tokens:>7} {t * 1e3:>9.1f} {t * 1e3 / tokens:>14.3f}")


def main(argv=None):
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    B = args.batch_size
    x = rng.standard_normal((B, 3, args.img_size, args.img_size)).astype(np.float32)
    y = rng.integers(0, 10, B)
    if args.probe:
        return probe_memory(args, x, y)
    tune_host_allocator()              # as the training entry points do
    net, round_mini = bench_minivit(args, x, y)
    model = net.model
    print(f"machine: {cpu_name()}, {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, NumPy {np.__version__}; float32 GEMM reference "
          f"{gemm_gflops(model.xp):.1f} GFLOP/s")
    print(f"model: {model!r}")
    print(f"batch {B}, {args.dtype}, {args.warmup} warm-up steps, then {args.rounds} rounds of "
          f"{args.steps} timed steps per side, taking turns")
    sides, round_torch = ["minivit"], None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("torch: not installed, comparison skipped (pip install torch to add it)")
        else:
            device = "cuda" if model.backend == "cupy" else "cpu"
            round_torch, _ = bench_torch(args, x, y, device, threads=net.threads if model.xp is np else None)
            sides.append("torch")
    if model.xp is np:       # the products on the BLAS a training run would choose; after torch's
        print(blas.choose(model, B, net.threads))     # import, which oneMKL loaded first would slow
    times = {side: [] for side in sides}
    for r in range(args.rounds):
        times["minivit"].append(round_mini())
        if round_torch is not None:
            times["torch"].append(round_torch())
        print(f"round {r + 1}: " + "  ".join(f"{side} {B / t[-1]:.1f} img/s" for side, t in times.items()))
    t_mini = float(np.median(times["minivit"]))
    ips_mini = B / t_mini
    print(f"minivit ({model.backend}, {net.threads} thread{'s' if net.threads > 1 else ''}): "
          f"{t_mini * 1e3:8.1f} ms/step  {ips_mini:8.1f} images/s (median round)")
    if round_torch is not None:
        t_torch = float(np.median(times["torch"]))
        ips_torch = B / t_torch
        print(f"torch {torch.__version__} ({device}, {torch.get_num_threads()} threads): "
              f"{t_torch * 1e3:8.1f} ms/step  {ips_torch:8.1f} images/s (median round)")
        per_round = [tt / tm for tm, tt in zip(times["minivit"], times["torch"])]
        print(f"ratio minivit / torch: {ips_mini / ips_torch:.2f} "
              f"(per round: {', '.join(f'{r:.2f}' for r in per_round)})")
    if args.memory:
        measure_memory(args, sides)
    if args.scaling:
        scaling_table(args)


if __name__ == "__main__":
    main()
