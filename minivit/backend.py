"""The array backend: NumPy on the CPU, CuPy on the GPU, chosen with one switch.

Every layer in minivit is written once against an array module called ``xp``.
``xp`` is ``numpy`` or ``cupy``; the two share almost the whole NumPy API, so the
same line of code runs on either. Layers never import a backend themselves: they
ask ``array_module(x)`` which module owns the array they were given.

The switch:

    get_xp("numpy")   # always works
    get_xp("cupy")    # CuPy, or a clear error saying why not and how to fix it
    get_xp("auto")    # CuPy when a GPU is usable, else NumPy
    get_xp(None)      # the MINIVIT_BACKEND environment variable, else "numpy"
"""

import contextlib
import ctypes
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

BACKENDS = ("numpy", "cupy", "auto")
ENV_VAR = "MINIVIT_BACKEND"

GPU_INSTALL_HINT = (
    "Install the GPU extra with `pip install -e .[gpu]` (CuPy for CUDA 12) on a machine "
    "with an NVIDIA GPU and driver, or use backend='numpy'."
)

_cupy = None          # the cupy module once it imported and found a GPU
_cupy_error = None    # why it could not be used, as a sentence


def _load_cupy():
    """Import CuPy and check that a GPU is usable; remember the outcome."""
    global _cupy, _cupy_error
    if _cupy is not None or _cupy_error is not None:
        return _cupy
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA install raising anything
        _cupy_error = f"CuPy is not installed or failed to import ({type(e).__name__}: {e})."
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device found")
        cupy.zeros(1).sum().item()  # a real allocation and kernel launch
    except Exception as e:
        _cupy_error = f"CuPy is installed but no GPU is usable ({type(e).__name__}: {e})."
        return None
    _cupy = cupy
    return _cupy


def gpu_available():
    """True when CuPy imports and can run a kernel on a GPU."""
    return _load_cupy() is not None


def gpu_unavailable_reason():
    """Why the CuPy backend cannot be used here (None when it can)."""
    _load_cupy()
    return _cupy_error


def resolve_backend(name=None):
    """Turn None / "auto" / "numpy" / "cupy" into "numpy" or "cupy"."""
    if name is None:
        name = os.environ.get(ENV_VAR, "").strip().lower() or "numpy"
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(
            f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)} "
            f"(or set {ENV_VAR} to one of them)"
        )
    name = name.lower()
    if name == "auto":
        return "cupy" if gpu_available() else "numpy"
    if name == "cupy" and not gpu_available():
        raise RuntimeError(f"backend 'cupy' was requested but {_cupy_error} {GPU_INSTALL_HINT}")
    return name


def get_xp(name=None):
    """The array module (numpy or cupy) for a backend name; see resolve_backend."""
    return _load_cupy() if resolve_backend(name) == "cupy" else np


def array_module(x):
    """numpy or cupy: whichever owns the array x (plain Python data counts as NumPy)."""
    if _cupy is not None and isinstance(x, _cupy.ndarray):
        return _cupy
    return np


def backend_name(xp):
    return "cupy" if xp is not np else "numpy"


def to_host(x):
    """Any array (NumPy or CuPy) as a NumPy array; NumPy arrays pass through unchanged."""
    if _cupy is not None and isinstance(x, _cupy.ndarray):
        return _cupy.asnumpy(x)
    return np.asarray(x)


def to_device(x, xp, dtype=None):
    """Put x on the backend xp (copying host -> GPU when needed), optionally casting."""
    if xp is np:
        return to_host(x) if dtype is None else to_host(x).astype(dtype, copy=False)
    return xp.asarray(x, dtype=dtype)


def erf(x):
    """The error function, elementwise, on whichever backend owns x (exact to float64)."""
    if array_module(x) is np:
        from scipy.special import erf as _erf
    else:
        from cupyx.scipy.special import erf as _erf
    return _erf(x)


# ----------------------------------------------------------------- CPU speed helpers

def tune_host_allocator():
    """Keep big NumPy temporaries on the heap (glibc on Linux).

    By default glibc gives every allocation above 128 KiB fresh pages from the kernel
    and returns them on free, so each temporary of a training step ([B, N, 4D] floats are
    16 MiB) costs page faults to zero its memory again: about 0.6 s of kernel time per
    step of the default ViT on 2 cores. Raising the mmap threshold to its maximum (32 MiB)
    and the trim threshold to 1 GiB lets freed blocks be reused instead; one arena for
    every thread lets the shard threads (see below) reuse those blocks too. Set
    MINIVIT_KEEP_MALLOC=1 to leave the allocator alone. Returns True when applied."""
    if os.environ.get("MINIVIT_KEEP_MALLOC") or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):   # not glibc
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
    return (bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))
            and bool(mallopt(M_ARENA_MAX, 1)))


HOST_ALLOCATOR_TUNED = tune_host_allocator()


# ------------------------------------------------------------- CPU threads (NumPy only)
#
# NumPy runs every elementwise operation on one core; only its matmuls use several (through
# BLAS). A ViT treats every image of a batch independently until the parameter gradients
# are summed, so the model can instead cut the batch into one shard per core and run the
# same array code on every shard at once, in threads: NumPy releases Python's GIL while
# it computes, so the shards really run in parallel, elementwise work included. BLAS is
# held to one thread per shard meanwhile (through threadpoolctl), so the cores are not
# oversubscribed. model.py does the cutting; these helpers run the shards.

THREADS_ENV_VAR = "MINIVIT_THREADS"

_pool = None                  # the worker threads, made on first use
_blas = None                  # threadpoolctl's controller, or False when it is missing
_pool_lock = threading.Lock()


def cpu_threads():
    """How many shards a NumPy batch is split into: MINIVIT_THREADS when set, else every
    CPU this process may run on. 1 turns the splitting off."""
    value = os.environ.get(THREADS_ENV_VAR, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{THREADS_ENV_VAR}={value!r} is not a positive integer: set it "
                             f"to the number of CPU threads to use (1 turns threading off)")
        return int(value)
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
        except Exception:     # not installed: the model then runs unsplit
            _blas = False
    return _blas


def can_split():
    """True when BLAS can be held to one thread per shard (threadpoolctl is installed);
    without it the model runs unsplit unless told otherwise."""
    return bool(_blas_controller())


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
    blas = _blas_controller()
    with blas.limit(limits=1, user_api="blas") if blas else contextlib.nullcontext():
        futures = [_pool.submit(fn, item) for item in items[1:]]
        try:
            first = fn(items[0])
        finally:              # never leave a shard running behind an exception
            wait(futures)
        return [first] + [f.result() for f in futures]
