"""Data-parallel training step speed, and the time of one Allreduce of the gradients.

    python benchmarks/mpi_scaling.py                      # 1 process (threads: every core)
    mpirun -n 2 python benchmarks/mpi_scaling.py          # 2 ranks, one thread each

Times training steps of the default ViT (forward, cross-entropy, backward, the Allreduce
of the flat gradient, AdamW) at a global batch (default 80) split over the ranks, as the
training loop runs them, and separately the Allreduce of a buffer the size of the
model's gradients. Rank 0 prints.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minivit  # noqa: E402
from minivit import distributed  # noqa: E402
from minivit.fast import FastRunner, cross_entropy  # noqa: E402
from minivit.fast.threads import cpu_threads, limit_blas_threads, tune_host_allocator  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=80, help="global batch")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args(argv)
    tune_host_allocator()
    world = distributed.world()
    model = minivit.ViT()
    threads = max(1, cpu_threads() // world.local_size)
    if world.local_size > 1:
        limit_blas_threads(threads)                   # as train() does
    net = FastRunner(model, threads=threads)
    opt = minivit.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    B = args.batch_size
    x = rng.standard_normal((B, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, B)
    rows = world.part(B)

    def step():
        logits = net.forward(x[rows])                 # this rank's rows, as train_step does
        _, dlogits = cross_entropy(logits, y[rows])
        model.zero_grad()
        net.backward(dlogits * (len(logits) / B), need_dx=False)
        world.sum_gradients(model.flat_grads)
        opt.step()

    for _ in range(args.warmup):
        step()
    world.barrier()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    world.barrier()
    seconds = (time.perf_counter() - t0) / args.steps
    buffer = np.ones(model.num_parameters(), dtype=np.float32)
    reduce_times = []
    for _ in range(10):
        world.barrier()
        t = time.perf_counter()
        world.sum_gradients(buffer)
        reduce_times.append(time.perf_counter() - t)
    if world.main:
        print(f"{world.size} process{'es' if world.size > 1 else ''} x {net.threads} thread"
              f"{'s' if net.threads > 1 else ''}: global batch {B}, {seconds * 1e3:.1f} ms/step, "
              f"{B / seconds:.1f} images/s")
        print(f"Allreduce of {buffer.nbytes / 2**20:.1f} MiB ({model.num_parameters():,} float32 "
              f"gradients): median {np.median(reduce_times) * 1e3:.2f} ms"
              + ("" if world.size > 1 else " (one process: nothing to send)"))


if __name__ == "__main__":
    main()
