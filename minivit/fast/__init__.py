"""The fast path: the engine's ViT computed in fewer operations (fused kernels, gradients
written in place, a batch split over the CPU's cores), sharing only the engine's
parameter layout, and checked against the engine (check.py) in the tests and before
every fast training run.

    runner.py   FastRunner: a model's forward and backward, run fast
    kernels.py  fused elementwise kernels, the blocked CPU GELU
    loss.py     the fused cross-entropy
    optim.py    Muon with its stacks shared among threads
    threads.py  CPU threads, the host allocator, the machine's GEMM reference
    blas.py     the matrix products on NumPy's BLAS or oneMKL, whichever is faster here
    check.py    the fast path against the engine
"""

from . import blas
from .check import check_against_engine
from .loss import cross_entropy
from .optim import Muon
from .runner import FastRunner
from .threads import cpu_threads, gemm_gflops, limit_blas_threads, tune_host_allocator

__all__ = ["FastRunner", "blas", "check_against_engine", "cross_entropy", "Muon", "cpu_threads",
           "gemm_gflops", "limit_blas_threads", "tune_host_allocator"]
