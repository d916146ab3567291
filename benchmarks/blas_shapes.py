"""The training step's own matrix products, shape by shape, on every BLAS found here:
NumPy's (OpenBLAS), oneMKL (`pip install minivit[mkl]`: libmkl_rt through ctypes, as the
fast path calls it, minivit/fast/blas.py) and BLIS (`pip install blis`, single-threaded),
to choose the one the fast path uses (benchmarks/RESULTS.md). oneMKL runs sequentially, as
in the fast path's shards, so its --all-threads figures are its one-thread ones (those of
2026-12-06 in RESULTS.md had its OpenMP threads).

    python benchmarks/blas_shapes.py                               # hybrid, batch 128 and 80, 16/24/32px
    python benchmarks/blas_shapes.py --preset default --sizes 32 --batch-sizes 80

The shapes are the step's real ones (forward, cross-entropy, backward, the optimizer),
recorded on the strict CuPy stand-in as roofline.py records them. Each distinct product
is timed by itself on fresh float32 operands, the median of --rounds rounds, on one
thread (what each of the fast path's shards sees: it cuts the batch into one shard per
core, BLAS held to one thread each) and, with --all-threads, on every thread too.
Printed per shape: how often the step runs it, its GFLOP, each library's GFLOP/s; then
per size, each library's total for the step's products and its share of the whole
product time, and the GEMM reference (threads.gemm_gflops) of the same run.
"""

import argparse
import collections
import contextlib
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from minivit.config import PRESETS, TrainConfig  # noqa: E402
from minivit.fast import blas  # noqa: E402
from minivit.fast.threads import gemm_gflops, tune_host_allocator  # noqa: E402
from roofline import count_flops, stage_sizes  # noqa: E402

def libraries():
    """{name: matmul(a, b) -> c} of every BLAS found: oneMKL as the fast path calls it
    (fast/blas.py: sequential, one thread, whatever the thread limit)."""
    found = {"openblas": np.matmul}
    if blas.find_mkl() is not None:
        found["mkl"] = lambda a, b: blas.mkl_matmul(a, b, None)
    try:
        import blis.py

        def blis_matmul(a, b):
            if a.ndim == b.ndim == 2:
                return blis.py.gemm(a, b)
            batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
            pairs = zip(np.broadcast_to(a, batch + a.shape[-2:]).reshape(-1, *a.shape[-2:]),
                        np.broadcast_to(b, batch + b.shape[-2:]).reshape(-1, *b.shape[-2:]))
            return np.stack([blis.py.gemm(np.ascontiguousarray(x), np.ascontiguousarray(y)) for x, y in pairs])
        found["blis"] = blis_matmul
    except ImportError:
        pass
    return found


def seconds(fn, rounds, min_time=0.02):
    """The median over rounds of one call's time (each round repeats fn for min_time)."""
    fn()
    times = []
    for _ in range(rounds):
        reps, start = 0, time.perf_counter()
        while reps == 0 or time.perf_counter() - start < min_time:
            fn()
            reps += 1
        times.append((time.perf_counter() - start) / reps)
    return float(np.median(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="hybrid", choices=list(PRESETS))
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 80])
    ap.add_argument("--sizes", type=int, nargs="+", default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--all-threads", action="store_true", help="also time every product on all threads")
    ap.add_argument("--top", type=int, default=12, help="shapes printed per size (by time)")
    ap.add_argument("--embed-dim", type=int, default=None, help="override the preset's width")
    ap.add_argument("--depth", type=int, default=None, help="override the preset's depth")
    args = ap.parse_args(argv)
    tune_host_allocator()
    libs = libraries()
    from threadpoolctl import ThreadpoolController
    control = ThreadpoolController()
    cfg = TrainConfig.from_preset(args.preset, **{k: v for k, v in (("embed_dim", args.embed_dim),
                                                                   ("depth", args.depth)) if v})
    print(f"preset {args.preset}; libraries: {', '.join(libs)}; BLAS found by threadpoolctl: "
          f"{', '.join(sorted({i['internal_api'] for i in control.info() if i['user_api'] == 'blas'}))}")
    rng = np.random.default_rng(0)
    modes = [1] + ([None] if args.all_threads else [])
    for batch in args.batch_sizes:
        for side in args.sizes or stage_sizes(cfg):
            _, _, shapes = count_flops(cfg, batch, side)
            counts = collections.Counter((tuple(a), tuple(b)) for a, b in shapes)
            ref = gemm_gflops()
            rows = []
            for (sa, sb), count in counts.items():
                a, b = rng.standard_normal(sa).astype(np.float32), rng.standard_normal(sb).astype(np.float32)
                gflop = 2 * np.prod(np.broadcast_shapes(sa[:-2], sb[:-2]) or (1,)) * sa[-2] * sa[-1] * sb[-1] / 1e9
                times = {}
                for threads in modes:
                    for name, matmul in libs.items():
                        if threads is None and name == "blis":
                            continue
                        limit = control.limit(limits=threads, user_api="blas") if threads else None
                        with limit or contextlib.nullcontext():
                            times[(name, threads)] = seconds(lambda: matmul(a, b), args.rounds)
                rows.append((sa, sb, count, gflop, times))
            print(f"\nbatch {batch}, {side}px: {len(shapes)} products of {len(rows)} shapes, "
                  f"{sum(r[3] * r[2] for r in rows):.2f} GFLOP; GEMM reference {ref:.1f} GFLOP/s "
                  f"(1024^3, all threads)")
            keys = [k for k in rows[0][4]]
            head = "  ".join(f"{name}{'' if t else '*'}" .rjust(10) for name, t in keys)
            print(f"{'a':>18} {'b':>18} {'x':>3} {'GFLOP':>7} {head}   (GFLOP/s; * all threads)")
            rows.sort(key=lambda r: -r[2] * r[4][("openblas", 1)])
            for sa, sb, count, gflop, times in rows[:args.top]:
                rates = "  ".join(f"{gflop / times[k]:>10.1f}" for k in keys)
                print(f"{str(sa):>18} {str(sb):>18} {count:>3} {gflop:>7.4f} {rates}")
            totals = {k: sum(r[2] * r[4][k] for r in rows) for k in keys}
            flops = sum(r[2] * r[3] for r in rows)
            print("step's products, total ms (GFLOP/s): " + ", ".join(
                f"{name}{'' if t else '*'} {1e3 * v:.1f} ({flops / v:.1f})" for (name, t), v in totals.items()))


if __name__ == "__main__":
    main()
