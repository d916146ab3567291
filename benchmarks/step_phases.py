"""Where a training step's time goes, phase by phase, as `minivit train` runs it.

    python benchmarks/step_phases.py                         # hybrid, 32px, shipped sample
    python benchmarks/step_phases.py --preset default --data DIR --steps 30
    python benchmarks/step_phases.py --low-res 0.99          # the 16px stage instead

Runs the training loop itself (minivit.train.train, the fast path on NumPy) for --steps
steps, cProfile switched on inside each train_step alone (the run's setup, the loader
and the final evaluation stay out of it), and reads from the main thread's profile the
time of each phase of a step: the regularizers, resizing, the forward pass, the loss,
the backward pass, the gradient's norm and the NaN watch, clipping, the optimizer, the
weight average; the time between steps (the loader's next batch) is clocked apart. The fast path's shards run in worker
threads while the main thread runs its own shard and waits for theirs, so a phase's time
in the main thread is its wall time. cProfile's own cost per Python call inflates the
phases made of many small calls a little; the products and kernels are single C calls.
Printed: every function train_step calls, its ms per step and share of the step; the
functions of most time of their own (where inside the passes the time goes); the median
time between steps; the step's images/s and the GEMM reference (threads.gemm_gflops) of
the run.
"""

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from minivit.config import PRESETS, TrainConfig  # noqa: E402
from minivit.fast.threads import cpu_threads, gemm_gflops  # noqa: E402
from minivit import train as minivit_train  # noqa: E402
from minivit.train import train  # noqa: E402

def where(func):
    """'runner.py:forward' for a pstats function key (path, line, name)."""
    return f"{os.path.basename(func[0])}:{func[2]}"


def callees(stats, file, name):
    """{where(f): seconds} of every function f that the function `name` of `file`
    called, counting only those calls (pstats' callers table), and that function's own
    cumulative seconds."""
    found, total = {}, 0.0
    for func, (_, _, _, cumulative, callers) in stats.stats.items():
        if func[0].replace(os.sep, "/").endswith(file) and func[2] == name:
            total += cumulative
        for caller, timing in callers.items():
            if caller[0].replace(os.sep, "/").endswith(file) and caller[2] == name:
                found[where(func)] = found.get(where(func), 0.0) + timing[3]
    return found, total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="hybrid", choices=list(PRESETS))
    ap.add_argument("--data", default=None, help="CIFAR-10 folder (default: the shipped sample)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--top", type=int, default=15, help="functions listed by their own time")
    ap.add_argument("--low-res", type=float, default=0.0, help="share of the steps on low_res_size "
                    "images (default 0: every step full size)")
    args = ap.parse_args(argv)
    base = TrainConfig.from_preset(args.preset)
    batch = args.batch_size or base.batch_size
    cfg = TrainConfig.from_preset(args.preset, batch_size=batch, epochs=1, val_fraction=0.0,
                                  limit_train=batch * args.steps, low_res=args.low_res, mid_res=0.0,
                                  checkpoint_minutes=0.0)
    ref = gemm_gflops()
    profile, between, last, steps = cProfile.Profile(), [], [], [0]
    real_step = minivit_train.train_step

    def profiled_step(*a, **k):                  # the profile holds the steps alone
        now, steps[0] = time.perf_counter(), steps[0] + 1
        if last:
            between.append(now - last[0])        # the loader's batch and the loop's bookkeeping
        profile.enable()
        try:
            return real_step(*a, **k)
        finally:
            profile.disable()
            last[:] = [time.perf_counter()]
    minivit_train.train_step = profiled_step
    try:
        with tempfile.TemporaryDirectory() as out:
            train(cfg, data=args.data, out=os.path.join(out, "run"), progress=False, plots=False,
                  log=lambda *a: None)
    finally:
        minivit_train.train_step = real_step
    stats = pstats.Stats(profile)
    phases, step = callees(stats, "minivit/train.py", "train_step")
    per = 1e3 / steps[0]                         # the steps the data held, not --steps
    stage = f"low_res {args.low_res}" if args.low_res else "full size"
    print(f"preset {args.preset}, batch {batch}, {steps[0]} steps ({stage}), fast path on NumPy, "
          f"{cpu_threads()} threads; GEMM reference {ref:.1f} GFLOP/s")
    print(f"train_step: {step * per:.1f} ms a step, {batch / (step / steps[0]):.1f} images/s; "
          f"what it calls, ms a step and share:")
    for phase, seconds in sorted(phases.items(), key=lambda kv: -kv[1]):
        if seconds * per >= 0.05:
            print(f"  {phase:<32s} {seconds * per:8.1f} ms  {seconds / step:6.1%}")
    print(f"inside, the {args.top} functions of most time of their own (an operator such as @ "
          f"counts in the function that wrote it; the main thread runs one of the "
          f"{cpu_threads()} shards), ms a step:")
    own = sorted(((tt, func) for func, (_, _, tt, _, _) in stats.stats.items()), reverse=True)
    for tt, func in own[:args.top]:
        print(f"  {where(func):<48s} {tt * per:8.1f} ms  {tt / step:6.1%}")
    print(f"between steps (the loader's next batch, the loop's bookkeeping): median "
          f"{1e3 * sorted(between)[len(between) // 2]:.1f} ms" if between else "")


if __name__ == "__main__":
    main()
