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

`@kernel` (at the end) turns a chain of elementwise operations into one GPU launch.
"""

import functools
import os

import numpy as np

from .errors import BadValue, MissingPackage, NoDevice

BACKENDS = ("numpy", "cupy", "auto")
ENV_VAR = "MINIVIT_BACKEND"

_cupy = None          # the cupy module once it imported and found a GPU
_cupy_erf = None      # cupyx.scipy.special.erf, with it
_cupy_error = None    # why it could not be used, and the fix, as sentences
_cupy_missing = False  # True when CuPy itself did not import (else: no usable GPU)
_USE_NUMPY = "use the NumPy backend (--backend numpy; backend='numpy' from Python)"


def check_gpu(cupy, cupy_erf):
    """Run what minivit needs of a GPU once: a device, a matmul (cuBLAS) and the erf of
    the GELU (compiled at run time by NVRTC). Returns None, or what is wrong and the fix."""
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        count, why = 0, f"{type(e).__name__}: {e}"
    else:
        why = "no CUDA device found"
    if count < 1:
        return (f"no NVIDIA GPU is usable: no driver or no device ({why}). CuPy needs an NVIDIA "
                f"GPU and its driver (`nvidia-smi` shows both); else {_USE_NUMPY}.")
    try:
        a = cupy.ones((4, 4), dtype="float32")
        float((a @ a).sum())                      # cuBLAS
        float(cupy_erf(a).sum())                  # a kernel compiled by NVRTC
    except Exception as e:
        return (f"the GPU works but CUDA libraries are missing or broken ({type(e).__name__}: "
                f"{e}). Install them with `pip install 'cupy-cuda12x[ctk]==14.2.0'` (the [gpu] extra "
                f"does), or install the CUDA 12 toolkit; else {_USE_NUMPY}.")
    return None


def _load_cupy():
    """Import CuPy and check that a GPU is usable; remember the outcome."""
    global _cupy, _cupy_erf, _cupy_error, _cupy_missing
    if _cupy is not None or _cupy_error is not None:
        return _cupy
    _cupy_missing = False
    try:
        import cupy
        from cupyx.scipy.special import erf as cupy_erf
    except ImportError as e:
        _cupy_missing = True
        _cupy_error = (f"CuPy is not installed ({e}). Install it with `pip install -e .[gpu]` "
                       f"(CuPy for CUDA 12 with its libraries) on a machine with an NVIDIA GPU, "
                       f"or {_USE_NUMPY}.")
        return None
    except Exception as e:  # a broken install raising anything
        _cupy_missing = True
        _cupy_error = (f"CuPy failed to import ({type(e).__name__}: {e}). Reinstall it with "
                       f"`pip install --force-reinstall 'cupy-cuda12x[ctk]==14.2.0'`, or {_USE_NUMPY}.")
        return None
    _cupy_error = check_gpu(cupy, cupy_erf)
    if _cupy_error is None:
        _cupy, _cupy_erf = cupy, cupy_erf
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
        raise BadValue(
            f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)} "
            f"(or set {ENV_VAR} to one of them)"
        )
    name = name.lower()
    if name == "auto":
        return "cupy" if gpu_available() else "numpy"
    if name == "cupy" and not gpu_available():
        error = MissingPackage if _cupy_missing else NoDevice
        raise error(f"backend 'cupy' was requested but {_cupy_error}")
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


def erf_function(xp):
    """The elementwise erf of a backend module (SciPy's or CuPy's), e.g. for fused kernels."""
    if xp is np:
        from scipy.special import erf as host_erf
        return host_erf
    return _cupy_erf


def erf(x):
    """The error function, elementwise, on whichever backend owns x (exact to float64)."""
    return erf_function(array_module(x))(x)


# ------------------------------------------------------------------ fused kernels

class kernel:
    """An elementwise kernel written once as a function body(xp, *arrays).

    A chain of elementwise operations costs one kernel launch per operation on CuPy (5-20
    us of Python and launch overhead each) and one pass over memory per operation on
    NumPy. On CuPy the body becomes `cupy.fuse(body)`: one compiled kernel, one launch; on
    NumPy it runs as written (or `numpy`, a function of the arrays computing the same
    numbers faster). Bodies use only arithmetic, `xp` ufuncs and `xp.where`: what
    cupy.fuse compiles.

        @kernel
        def residual(xp, x, h, b, k):        # x + k (h + b): one launch
            return x + k * (h + b)
    """

    def __init__(self, body, numpy=None):
        self.body, self.numpy = body, numpy
        self._compiled = {}
        functools.update_wrapper(self, body)

    def __call__(self, *args):
        xp = next((array_module(a) for a in args if hasattr(a, "shape")), np)
        if xp is np:
            return self.numpy(*args) if self.numpy is not None else self.body(np, *args)
        if xp not in self._compiled:
            self._compiled[xp] = xp.fuse(kernel_name=self.body.__name__)(
                functools.partial(self.body, xp))
        return self._compiled[xp](*args)
