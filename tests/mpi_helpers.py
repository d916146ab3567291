"""Run `minivit` in an MPI rank with a test's changes: FAIL_RANK=R makes rank R fail in
epoch 3; CUPY_STRICT=1 installs the strict CuPy stand-in as CuPy."""

import os
import sys

from minivit import cli, distributed, train

if os.environ.get("CUPY_STRICT"):
    import cupy_strict

    class Setter:
        setattr = staticmethod(setattr)
    cupy_strict.install(Setter)

if os.environ.get("FAIL_RANK"):
    real = train.train_epoch

    def failing(run, stop):
        if run.epoch == 2 and distributed.world().rank == int(os.environ["FAIL_RANK"]):
            raise RuntimeError("planted failure in epoch 3")
        return real(run, stop)
    train.train_epoch = failing

sys.exit(cli.main(sys.argv[1:]))
