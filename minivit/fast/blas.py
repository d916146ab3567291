"""The BLAS the fast path's matrix products run on, on the CPU: NumPy's own (OpenBLAS in
NumPy's wheels) or oneMKL (`pip install minivit[mkl]`: the `mkl` wheel's libmkl_rt,
called through ctypes on the arrays' own memory), whichever runs this model's products
faster on this machine.

Which one is faster depends on the CPU: on the AMD EPYC VM OpenBLAS runs the step's
products 1.4x faster than oneMKL (benchmarks/RESULTS.md), while on the Intel Xeon VM
PyTorch's oneMKL ran them 1.3x faster than NumPy's OpenBLAS. So the choice is measured
where the run is: choose() times a model's own products (the linear layers' shapes of one
shard, and attention's batched products) on both, one thread each as the shards run
them, and takes oneMKL for each kind only where it is faster. Set MINIVIT_BLAS=openblas
or =mkl to decide instead; without the mkl wheel everything stays on NumPy.

    from minivit.fast import blas
    print(blas.choose(model, batch_size=128, threads=2))   # one line: what runs what
    c = blas.matmul(a, b)             # a @ b on the chosen BLAS (NumPy arrays; else np.matmul)

Only the products' rounding differs between the two; the tests run the fast path against
the engine on both. One caution: PyTorch imported into a process after oneMKL was loaded
here runs its own products sequentially (1.5x slower steps seen): import torch first.
"""

import ctypes
import glob
import os
import sys
import threading
import time

import numpy as np

from ..engine.backend import array_module
from ..engine.errors import BadValue, MissingPackage
from . import threads

ENV_VAR = "MINIVIT_BLAS"
CHOICES = ("auto", "openblas", "mkl")
MIN_GAIN = 1.05          # oneMKL is taken only when it is at least 5% faster

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_MKL_THREADING_SEQUENTIAL = 1   # each call on the thread that makes it: the shards are the threads
_MKL_INTERFACE_LP64 = 0
_INT_MAX = 2 ** 31 - 1           # ctypes' c_int wraps silently past it
_lib = None              # libmkl_rt with its GEMMs typed, False when not found
_lib_lock = threading.Lock()
_use = {"matrix": False, "batched": False}   # which products run on oneMKL
_NAMES = {True: "oneMKL", False: "NumPy's"}


# ---------------------------------------------------------------------- finding oneMKL

def _candidates():
    """Where the mkl wheel puts libmkl_rt: this environment's lib/ (and the user site's)."""
    roots = [sys.prefix, getattr(sys, "base_prefix", sys.prefix)]
    try:
        import site
        roots.append(os.path.dirname(os.path.dirname(os.path.dirname(site.getusersitepackages()))))
    except Exception:
        pass
    found = []
    for root in roots:
        found += sorted(glob.glob(os.path.join(root, "lib", "libmkl_rt.so*")), key=len)
    return found


def find_mkl():
    """libmkl_rt loaded, its float32 and float64 GEMMs typed; None when not installed."""
    global _lib
    with _lib_lock:
        if _lib is None:
            _lib = _load_mkl()
    return _lib or None


def _load_mkl():
    """The first libmkl_rt found that loads, set up and typed -> it, or False."""
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        # before any other call, whatever MKL_INTERFACE_LAYER and MKL_THREADING_LAYER say:
        lib.MKL_Set_Interface_Layer(_MKL_INTERFACE_LP64)         # 32-bit ints, as typed below
        lib.MKL_Set_Threading_Layer(_MKL_THREADING_SEQUENTIAL)
        i, p = ctypes.c_int, ctypes.c_void_p
        for name, scalar in (("s", ctypes.c_float), ("d", ctypes.c_double)):
            gemm, batch = getattr(lib, f"cblas_{name}gemm"), getattr(lib, f"cblas_{name}gemm_batch")
            gemm.restype = batch.restype = None
            gemm.argtypes = [i, i, i, i, i, i, scalar, p, i, p, i, scalar, p, i]
            batch.argtypes = [i] + [p] * 13 + [i, p]      # the group API: arrays of each argument
        threads.forget_blas_controller()     # so that it holds oneMKL's threads too
        return lib
    return False


# ---------------------------------------------------------------------- the products

def _layout(t, rows, cols):
    """How BLAS reads a 2-D operand [rows, cols] with strides t_strides (in elements) ->
    (transposed, leading dimension), or None when its rows nor its columns are contiguous."""
    s0, s1 = t
    if s1 == 1 or cols == 1:
        ld = s0 if rows > 1 else cols
        if ld >= max(1, cols):
            return False, ld
    if s0 == 1 or rows == 1:
        ld = s1 if cols > 1 else rows
        if ld >= max(1, rows):
            return True, ld
    return None


def _addresses(t, batch):
    """The address of each matrix of t's stack, broadcast to the batch shape: an int64 array
    (BLAS's pointer array) of prod(batch) entries, in C order."""
    shape = (1,) * (len(batch) - (t.ndim - 2)) + t.shape[:-2]
    strides = (0,) * (len(batch) - (t.ndim - 2)) + t.strides[:-2]
    offsets = np.zeros(batch, dtype=np.int64)
    for axis, (n, stride) in enumerate(zip(shape, strides)):
        if n > 1:
            index = np.arange(n, dtype=np.int64) * stride
            offsets += index.reshape((-1,) + (1,) * (len(batch) - axis - 1))
    return (offsets + t.ctypes.data).reshape(-1)


def mkl_matmul(a, b, out=None):
    """a @ b (into out) on oneMKL -> out, or None when the operands do not suit it."""
    if a.dtype != b.dtype or a.dtype not in (np.float32, np.float64) or a.ndim < 2 or b.ndim < 2:
        return None
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    if b.shape[-2] != k:
        return None                       # np.matmul says what is wrong
    if out is None:
        out = np.empty(batch + (m, n), dtype=a.dtype)
    elif (out.shape != batch + (m, n) or out.dtype != a.dtype or not out.flags.writeable
          or np.may_share_memory(out, a) or np.may_share_memory(out, b)):
        return None                       # np.matmul copies an overlapping out, or refuses it
    if 0 in out.shape or k == 0:
        return None
    size = a.itemsize
    if any(s % size for t in (a, b, out) for s in t.strides):
        return None
    la = _layout([s // size for s in a.strides[-2:]], m, k)
    lb = _layout([s // size for s in b.strides[-2:]], k, n)
    lc = _layout([s // size for s in out.strides[-2:]], m, n)
    if la is None or lb is None or lc is None or lc[0]:
        return None
    if max(m, n, k, la[1], lb[1], lc[1], int(np.prod(batch, dtype=np.int64))) > _INT_MAX:
        return None
    kind = "s" if a.dtype == np.float32 else "d"
    trans = [_TRANS if t else _NO_TRANS for t, _ in (la, lb)]
    if not batch:
        getattr(_lib, f"cblas_{kind}gemm")(_ROW_MAJOR, trans[0], trans[1], m, n, k, 1.0,
                                           a.ctypes.data, la[1], b.ctypes.data, lb[1], 0.0,
                                           out.ctypes.data, lc[1])
        return out
    pointers = [_addresses(t, batch) for t in (a, b, out)]
    if len(np.unique(pointers[2])) != len(pointers[2]):
        return None                       # out's matrices overlap
    i = ctypes.c_int
    scalar = ctypes.c_float if kind == "s" else ctypes.c_double

    def one(x, type_):                    # a group's argument: an array of one
        return (type_ * 1)(x)

    getattr(_lib, f"cblas_{kind}gemm_batch")(
        _ROW_MAJOR, one(trans[0], i), one(trans[1], i), one(m, i), one(n, i), one(k, i),
        one(1.0, scalar), pointers[0].ctypes.data, one(la[1], i), pointers[1].ctypes.data,
        one(lb[1], i), one(0.0, scalar), pointers[2].ctypes.data, one(lc[1], i), 1,
        one(len(pointers[2]), i))
    return out


def matmul(a, b, out=None):
    """xp.matmul(a, b, out=out), on oneMKL where choose() (or set_blas) gave it this kind
    of product (a stack of matrices: "batched", else "matrix") and the operands suit it
    (NumPy float32 or float64, each matrix with contiguous rows or columns)."""
    if (type(a) is np.ndarray and type(b) is np.ndarray and (out is None or type(out) is np.ndarray)
            and _use["batched" if max(a.ndim, b.ndim) > 2 else "matrix"]):
        done = mkl_matmul(a, b, out)
        if done is not None:
            return done
    return array_module(a).matmul(a, b, out=out)


# ---------------------------------------------------------------------- the choice

def current():
    """{"matrix": name, "batched": name}: what each kind of product runs on now."""
    return {kind: "mkl" if on else "openblas" for kind, on in _use.items()}


def set_blas(name):
    """Run every product on "openblas" (NumPy's) or "mkl" (MissingPackage, an ImportError,
    when the mkl wheel is missing)."""
    if name not in ("openblas", "mkl"):
        raise BadValue(f"unknown BLAS {name!r}: choose openblas or mkl")
    if name == "mkl" and find_mkl() is None:
        raise MissingPackage("oneMKL (libmkl_rt) was not found in this environment: install it "
                          "with `pip install minivit[mkl]` (or `pip install mkl`), or use "
                          f"{ENV_VAR}=openblas")
    for kind in _use:
        _use[kind] = name == "mkl"


def setting():
    """MINIVIT_BLAS: auto (the default), openblas or mkl."""
    value = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if value not in CHOICES:
        raise BadValue(f"{ENV_VAR}={value!r} is not one of {', '.join(CHOICES)}: unset it to let "
                       f"minivit time both BLAS libraries, or name one")
    return value


def product_shapes(model, batch_size, threads):
    """One shard's products of model at full resolution: {"matrix": [(a shape, b shape)],
    "batched": [...]}: the linear layers' forward, input and weight gradients, and
    attention's scores and weighted sums."""
    c = model.config
    images = max(1, -(-batch_size // max(1, threads)))
    tokens = c.num_patches + 1
    M, D, H, heads = images * tokens, c.embed_dim, c.hidden, c.num_heads
    d = D // heads
    matrix = []
    for din, dout in ((D, 3 * D), (D, D), (D, H), (H, D)):
        matrix += [((M, din), (din, dout)), ((M, dout), (dout, din)), ((dout, M), (M, din))]
    batched = [((images, heads, tokens, d), (images, heads, d, tokens)),
               ((images, heads, tokens, tokens), (images, heads, tokens, d))]
    return {"matrix": matrix, "batched": batched}


def _seconds(pairs, rounds=3):
    """The median over rounds of running every product of pairs once."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for a, b in pairs:
            matmul(a, b)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _operands(model, batch_size, threads):
    rng = np.random.default_rng(0)
    return {kind: [(rng.standard_normal(sa).astype(model.dtype), rng.standard_normal(sb).astype(model.dtype))
                   for sa, sb in pairs]
            for kind, pairs in product_shapes(model, batch_size, threads).items()}


def _time_on(library, kind, pairs):
    """Seconds for pairs' products of this kind on library, BLAS held to one thread."""
    previous = dict(_use)
    _use[kind] = library == "mkl"
    try:
        with threads.blas_threads_held_to_one():
            _seconds(pairs, rounds=1)                      # warm up
            return _seconds(pairs)
    finally:
        _use.update(previous)


def choose(model, batch_size, threads=1, clock=None, previous=None):
    """Set which BLAS runs which kind of product for model at batch_size on threads shards,
    by MINIVIT_BLAS, else as `previous` (a run's current() when it began: a resumed run
    keeps its products' rounding, so it ends bit for bit as one never stopped), else by
    timing both (BLAS held to one thread, as each shard runs) -> one line saying what was
    chosen and why. clock(kind, library) -> seconds replaces the timing (the tests')."""
    value = setting()
    if value != "auto":
        set_blas(value)
        return f"BLAS: {value} ({ENV_VAR}={value})"
    set_blas("openblas")
    if model.xp is not np:
        return "BLAS: the GPU's (cuBLAS)"
    if previous:
        wanted = {kind: previous.get(kind) == "mkl" for kind in _use}
        if any(wanted.values()) and find_mkl() is None:
            return ("BLAS: NumPy's; this run began on oneMKL, which is not installed here "
                    "(`pip install minivit[mkl]`): it goes on, not bit for bit as it would have")
        _use.update(wanted)
        return "BLAS: as the run began: " + ", ".join(
            f"{kind} products on {_NAMES[on]}" for kind, on in _use.items())
    if find_mkl() is None:
        return "BLAS: NumPy's (oneMKL not installed: `pip install minivit[mkl]` to let minivit try it)"
    if clock is None:
        operands = _operands(model, batch_size, threads)

        def clock(kind, library):
            return _time_on(library, kind, operands[kind])

    said = []
    for kind in _use:
        openblas, mkl = clock(kind, "openblas"), clock(kind, "mkl")
        _use[kind] = mkl * MIN_GAIN <= openblas
        said.append(f"{kind} products on {_NAMES[_use[kind]]} (oneMKL {openblas / mkl:.2f}x NumPy's speed)")
    return "BLAS: " + ", ".join(said)
