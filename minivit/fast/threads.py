"""CPU helpers for speed: the host allocator, a pool of worker threads, and the machine
reference that time-budget figures carry (gemm_gflops).

Nothing here changes a number the model computes; runner.py uses these to run the
engine's math faster on the CPU, and the training entry points call
tune_host_allocator() once (importing minivit changes nothing in the process).

NumPy runs every elementwise operation on one core; only its matmuls use several (through
BLAS). A ViT treats every image of a batch independently until the parameter gradients
are summed, so a batch can be cut into one shard per core and the same array code run on
every shard at once, in threads: NumPy releases Python's GIL while it computes, so the
shards really run in parallel, elementwise work included. BLAS is held to one thread per
shard meanwhile (through threadpoolctl), so the cores are not oversubscribed.
"""

import contextlib
import ctypes
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from ..engine.errors import BadValue

THREADS_ENV_VAR = "MINIVIT_THREADS"

_pool = None                  # the worker threads, made on first use
_blas = None                  # threadpoolctl's controller, or False when it is missing
_pool_lock = threading.Lock()


def tune_host_allocator():
    """Keep big NumPy temporaries on the heap (glibc on Linux). Returns True when applied.

    By default glibc gives every allocation above 128 KiB fresh pages from the kernel
    and returns them on free, so each temporary of a training step ([B, N, 4D] floats are
    16 MiB) costs page faults to zero its memory again, in kernel time. Raising the mmap
    threshold to its maximum (32 MiB) and the trim threshold to 1 GiB lets freed blocks be
    reused instead; one arena for every thread lets the shard threads reuse those blocks
    too. Set
    MINIVIT_KEEP_MALLOC=1 to leave the allocator alone."""
    if os.environ.get("MINIVIT_KEEP_MALLOC") or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):   # not glibc
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
    return (bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))
            and bool(mallopt(M_ARENA_MAX, 1)))


def cpu_threads():
    """How many shards a NumPy batch is split into: MINIVIT_THREADS when set, else every
    CPU this process may run on (1 when threadpoolctl is missing, since BLAS could not
    be held to one thread per shard). 1 turns the splitting off."""
    value = os.environ.get(THREADS_ENV_VAR, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise BadValue(f"{THREADS_ENV_VAR}={value!r} is not a positive integer: set it "
                               f"to the number of CPU threads to use (1 turns threading off)")
        return int(value)
    if not _blas_controller():
        return 1
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:    # not Linux
        return os.cpu_count() or 1


def _blas_controller():
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
            _blas = ThreadpoolController()
        except Exception:     # not installed
            _blas = False
    return _blas


def forget_blas_controller():
    """threadpoolctl's controller lists the BLAS libraries loaded when it was made: drop it,
    so that the next use makes it again and holds a BLAS loaded since (blas.py's oneMKL)."""
    global _blas
    _blas = None


def limit_blas_threads(n):
    """Hold BLAS to n threads in this process from now on (for several processes on one
    machine, e.g. MPI ranks, which would otherwise each start a BLAS thread per core and
    oversubscribe the cores). Returns False when threadpoolctl is missing."""
    blas = _blas_controller()
    if not blas:
        return False
    blas.limit(limits=n, user_api="blas")      # applied now, kept: never restored
    return True


def blas_threads_held_to_one():
    """A context in which BLAS runs on one thread (nothing when threadpoolctl is missing)."""
    blas = _blas_controller()
    return blas.limit(limits=1, user_api="blas") if blas else contextlib.nullcontext()


def parallel_map(fn, items):
    """[fn(item) for item in items], the items run at once in threads with BLAS held to
    one thread each; the first runs in the calling thread. Exceptions propagate."""
    items = list(items)
    if len(items) == 1:
        return [fn(items[0])]
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < len(items) - 1:
            if _pool is not None:
                _pool.shutdown(wait=False)      # a bigger pool replaces it
            _pool = ThreadPoolExecutor(max_workers=len(items) - 1,
                                       thread_name_prefix="minivit-shard")
    with blas_threads_held_to_one():
        futures = [_pool.submit(fn, item) for item in items[1:]]
        try:
            first = fn(items[0])
        finally:              # never leave a shard running behind an exception
            wait(futures)
        return [first] + [f.result() for f in futures]


def shards(batch, n):
    """Slices cutting a batch into min(n, batch) nearly equal, never empty shards."""
    n = max(1, min(n, batch))
    bounds = [batch * k // n for k in range(n + 1)]
    return [slice(bounds[k], bounds[k + 1]) for k in range(n)]


def gemm_gflops(xp=np, n=1024, seconds=0.5):
    """The machine's speed today, for a time budget's figures: GFLOP/s of a float32 n x n
    matrix product on the backend xp (NumPy's BLAS threads, or the GPU), over about
    `seconds`. A 5-minute budget buys training in proportion to it (a VM's speed drifts
    from day to day)."""
    a = xp.ones((n, n), dtype=np.float32)
    float((a @ a)[0, 0])                                 # warm up (and wait for a GPU)
    reps, start = 0, time.perf_counter()
    while reps == 0 or time.perf_counter() - start < seconds:
        float((a @ a)[0, 0])                             # one product, waited for
        reps += 1
    return 2.0 * n ** 3 * reps / (time.perf_counter() - start) / 1e9
