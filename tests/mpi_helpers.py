"""Run `minivit` in an MPI rank with a test's changes: FAIL_RANK=R makes rank R fail in
epoch 3; CUPY_STRICT=1 installs the strict CuPy stand-in as CuPy (STRICT_DEVICES=N with N GPUs;
REPORT_GPU=1 prints each rank's GPU and how its gradients were summed); SIGNAL_RANK=R sends SIGTERM to
rank R alone at the end of epoch 1; REPORT_BLAS=1 prints
each rank's BLAS thread count at the end; STEP_CLOCK=S gives train() a clock that moves S
seconds a training step (time budgets that do not depend on the machine's speed)."""

import os
import sys

from minivit import cli, distributed, train

if os.environ.get("CUPY_STRICT"):
    import cupy_strict

    class Setter:
        setattr = staticmethod(setattr)
    cupy_strict.install(Setter)
    cupy_strict.DEVICES = int(os.environ.get("STRICT_DEVICES", "1"))

if os.environ.get("FAIL_RANK"):
    real = train.train_epoch

    def failing(run, stop):
        if run.epoch == 2 and distributed.world().rank == int(os.environ["FAIL_RANK"]):
            raise RuntimeError("planted failure in epoch 3")
        return real(run, stop)
    train.train_epoch = failing

if os.environ.get("SIGNAL_RANK"):
    import signal
    real_end = train.end_of_epoch

    def signalled(run):
        record = real_end(run)
        if run.epoch == 1 and distributed.world().rank == int(os.environ["SIGNAL_RANK"]):
            os.kill(os.getpid(), signal.SIGTERM)
        return record
    train.end_of_epoch = signalled

if os.environ.get("STEP_CLOCK"):
    from minivit import runlock
    per_step, now = float(os.environ["STEP_CLOCK"]), [0.0]
    real_train = runlock.train

    def clocked(*args, **kwargs):
        def on_step(step):
            now[0] += per_step
        return real_train(*args, clock=lambda: now[0], on_step=on_step, **kwargs)
    runlock.train = clocked

code = cli.main(sys.argv[1:])
if os.environ.get("REPORT_GPU"):
    import cupy_strict
    world = distributed.world()
    path = "device buffer" if world.cuda_aware else "pinned host buffer"
    assert world.cuda_aware or world._host is not None
    print(f"rank {world.rank}: GPU {cupy_strict.CURRENT.device}, gradients summed through the "
          f"{path}", flush=True)
if os.environ.get("REPORT_BLAS"):
    from threadpoolctl import threadpool_info
    blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
    numpys = [p for p in blas if "numpy" in p["filepath"]] or blas     # the one matmuls use
    counts = sorted({p["num_threads"] for p in numpys})
    print(f"rank {distributed.world().rank}: BLAS threads {counts}", flush=True)
sys.exit(code)
