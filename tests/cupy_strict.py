"""A strict stand-in for CuPy, so the CuPy path runs in CI on machines without a GPU.

It computes with NumPy, but in an array type of its own that enforces the rules CuPy
enforces, and it counts device operations and host syncs:

- `ndarray` is its own type; `np.asarray(device)` / `__array__` raise (move data with
  `cupy.asnumpy` or `.get()`, as on CuPy); there is no `__index__`.
- A NumPy array, even 0-d, mixed into device arithmetic, passed to a device function or
  assigned into a device array raises TypeError, as CuPy does. Python and NumPy scalars
  are fine.
- `np.func(device)` dispatches only where real CuPy has `func`.
- Full reductions return 0-d device arrays; reading one (`float`, `int`, `bool`, `.item()`,
  `.get()`, `asnumpy`) is a host sync and is counted.
- Moving host data in (`asarray`, `array`) copies, and counts as a device operation.
- Every module attribute, ndarray method and keyword argument the code uses must exist
  in real CuPy: cupy_api/cupy_api.json, a snapshot of CuPy's API (make_snapshot.py), is
  the reference; anything else raises AttributeError / TypeError naming the snapshot.
- `fuse` turns a function into one counted operation, after running its body with the
  same strict arrays; inside it only elementwise work is allowed (what cupy.fuse compiles).

`recording()` keeps every device operation as it runs (fused functions with their
arguments, ufuncs with their operand types): tests/cupy_real.py replays them through real
CuPy's type rules, code generator and compiler.

COUNTS holds the totals: `ops` (kernel launches, host->device copies), `syncs` (reads of
device data on the host), and the matmuls' `matmul_flops` (2 m k n each; the other
products, dot, tensordot, einsum, are not counted: minivit uses none) and `matmul_shapes`. Launches follow real CuPy 14's rules where one call is several
kernels (`extra_launches`): an N-d matmul copies each operand that is not C-contiguous
before its batched GEMM; a full reduction through CUB is two kernels, a mean through CUB
adds a division; vdot is a multiply and a CUB sum; indexing with integer arrays gathers
or scatters through several kernels. `install(monkeypatch)` makes minivit's backend use this module
as CuPy until the test ends.
"""

import json
import os
import types

import numpy as np
import scipy.special

_API = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cupy_api", "cupy_api.json")))
API_FUNCTIONS = _API["cupy"]
API_METHODS = _API["ndarray"]
UFUNC_KWARGS = {"out", "casting", "dtype"}


class Counts:
    def __init__(self):
        self.reset()

    def reset(self):
        self.ops = 0
        self.syncs = 0
        self.matmul_flops = 0      # 2 m k n per product (benchmarks/roofline.py reads it)
        self.matmul_shapes = []    # (a shape, b shape) of each product

    def snapshot(self):
        return self.ops, self.syncs


COUNTS = Counts()
_state = types.SimpleNamespace(fusing=0, record=None)


class Record(types.SimpleNamespace):
    """One device operation: kind "fuse" (func, args, outputs), "ufunc" (name, args,
    outputs) or "call" (any other function or method: name, args, outputs, and asked:
    whether the call named a dtype). args / outputs: the values themselves for Python and
    NumPy scalars, else ("array", shape, dtype) of each array."""


def _spec(value):
    if isinstance(value, (ndarray, np.ndarray)):
        return ("array", value.shape, value.dtype)
    return value


def _asks_dtype(args, kwargs):
    """Whether a call names a dtype (dtype=..., or a dtype passed by position)."""
    named = kwargs.get("dtype") is not None
    return named or any(isinstance(a, (type, np.dtype, str)) for a in args)


def _record(kind, **fields):
    if _state.record is not None and not (_state.fusing and kind == "ufunc"):
        _state.record.append(Record(kind=kind, **fields))


class recording:
    """with recording() as ops: ... -> ops, every device operation run inside, in order."""

    def __enter__(self):
        self.previous, _state.record = _state.record, []
        return _state.record

    def __exit__(self, *exc):
        _state.record = self.previous


def _op(n=1):
    if not _state.fusing:
        COUNTS.ops += n


def _count_matmul(a, b):
    """Add a matmul's floating-point operations: [..., m, k] @ [..., k, n] is 2 m k n per
    matrix of the (broadcast) batch; a 1-d operand is a row (a) or a column (b), as in NumPy."""
    a, b = _unwrap(a), _unwrap(b)
    m = a.shape[-2] if a.ndim > 1 else 1
    n = b.shape[-1] if b.ndim > 1 else 1
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    COUNTS.matmul_flops += 2 * int(np.prod(batch)) * m * a.shape[-1] * n
    COUNTS.matmul_shapes.append((a.shape, b.shape))


def _sync():
    if _state.fusing:
        raise TypeError("cupy.fuse: a fused function cannot read device values on the host")
    COUNTS.syncs += 1


# ------------------------------------------------------------------ wrapping and checks

def _no_host_arrays(value, where):
    if isinstance(value, np.ndarray):
        raise TypeError(f"Unsupported type {type(value)}: a NumPy array (shape {value.shape}) "
                        f"was given to {where}; move it to the device with cupy.asarray first "
                        f"(the CuPy stand-in enforces CuPy's rule)")
    if isinstance(value, (list, tuple)):
        for v in value:
            _no_host_arrays(v, where)


def _unwrap(value):
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_unwrap(v) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


def _wrap(result, inputs=()):
    """NumPy results -> device arrays (scalars become 0-d arrays); counts one operation
    unless the result is a view of an input (reshape, transpose, slicing)."""
    if isinstance(result, tuple):
        return tuple(_wrap(r, inputs) for r in result)
    if isinstance(result, list):
        return [_wrap(r, inputs) for r in result]
    if isinstance(result, np.generic):
        result = np.asarray(result)
    if isinstance(result, np.ndarray):
        if not any(isinstance(i, np.ndarray) and np.shares_memory(result, i) for i in inputs):
            _op()
        return ndarray(result)
    return result


def _flat_inputs(args):
    out = []
    for a in args:
        if isinstance(a, ndarray):
            out.append(a._a)
        elif isinstance(a, (list, tuple)):
            out.extend(_flat_inputs(a))
    return out


def _check_kwargs(name, params, kwargs):
    if params is None or "**" in params:
        return
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise TypeError(f"{name}() got unexpected keyword arguments {unknown}: real CuPy's "
                        f"{name} takes {params} (tests/cupy_api/cupy_api.json)")


def extra_launches(name, args, kwargs):
    """Kernels real CuPy 14.2 launches for cupy.NAME(*args, **kwargs) beyond the one the
    stand-in counts (its _routines_linalg.pyx, cub.pyx and _routines_statistics.pyx)."""
    arrays = [a._a if isinstance(a, ndarray) else a for a in args]
    out = kwargs.get("out")
    out = out._a if isinstance(out, ndarray) else out
    if name == "matmul":
        a, b = arrays[:2]
        extra = 0
        if max(a.ndim, b.ndim) <= 2:                 # dot: cuBLAS takes C or F order
            extra += sum(x.ndim == 2 and not (x.flags.c_contiguous or x.flags.f_contiguous) for x in (a, b))
            if out is not None and (np.shares_memory(out, a) or np.shares_memory(out, b)):
                extra += 1                           # computed aside, then copied
            return extra
        extra += sum(x.ndim >= 2 and not x.flags.c_contiguous for x in (a, b))   # ascontiguousarray
        if a.ndim >= 3 and b.ndim >= 3 and a.shape[:-2] != b.shape[:-2]:
            extra += 3                               # broadcast batch: pointer arrays, then batched GEMM
        if out is not None and not out.flags.c_contiguous:
            extra += 1
        return extra
    if name == "vdot":
        return 1 + _cub_full_reduction_extra(arrays[0])  # (a * b).sum(): multiply + CUB sum
    if name in ("sum", "mean", "max", "min"):
        x, axis = arrays[0], kwargs.get("axis", args[1] if len(args) > 1 else None)
        axes = tuple(range(x.ndim)) if axis is None else tuple(
            sorted(a % x.ndim for a in (axis if isinstance(axis, tuple) else (axis,))))
        cub = (x.flags.c_contiguous and axes == tuple(range(x.ndim - len(axes), x.ndim))) or \
              (x.flags.f_contiguous and axes == tuple(range(len(axes))))
        if not cub or x.size == 0:
            return 0                                 # CuPy's own reduction kernel: one
        extra = _cub_full_reduction_extra(x) if len(axes) == x.ndim else 0
        return extra + (name == "mean")              # the CUB sum, then a division
    return 0


CUB_TILE = 4096            # one thread block's items: a CUB sum of more takes two kernels


def _cub_full_reduction_extra(x):
    return int(x.size > CUB_TILE)


def _index_launches(key):
    """Kernels of an integer-array index beyond one (CuPy's indexing: the index arrays are
    broadcast and raveled into one flat index, then gathered or scattered)."""
    keys = key if isinstance(key, tuple) else (key,)
    arrays = sum(isinstance(k, ndarray) and k.dtype.kind in "iu" for k in keys)
    return 2 if arrays > 1 else 0


ELEMENTWISE = {"where", "clip", "astype"}   # non-ufunc calls cupy.fuse accepts


def _check_fusable(name, spec):
    if _state.fusing and spec.get("kind") != "ufunc" and name not in ELEMENTWISE:
        raise TypeError(f"cupy.fuse: {name} is not an elementwise operation; a fused function "
                        f"may use only ufuncs, arithmetic and where")


class ndarray:
    """A device array: NumPy inside, CuPy's rules outside."""

    __slots__ = ("_a",)
    __array_priority__ = 100

    def __init__(self, a):
        assert isinstance(a, np.ndarray)
        self._a = a

    # -------------------------------------------------------------- plain properties
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    T = property(lambda self: ndarray(self._a.T))

    @property
    def __cuda_array_interface__(self):
        """The buffer, as CuPy shows it to CUDA-aware libraries; the memory here is the
        host's, so an MPI library that is not CUDA-aware can read it in tests."""
        return {"shape": self.shape, "typestr": self.dtype.str, "version": 3, "strides": None,
                "data": (self._a.ctypes.data, False)}

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (ndarray(row) for row in self._a)

    def __repr__(self):
        return f"cupy_strict.ndarray(shape={self.shape}, dtype={self.dtype})"

    # ------------------------------------------------------- CuPy's host/device rules
    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use "
                        "`.get()` to construct a NumPy array explicitly. (CuPy stand-in)")

    def _host_scalar(self, kind):
        if self.size != 1:
            raise TypeError(f"only size-1 device arrays can be converted to {kind.__name__}")
        _sync()
        return kind(self._a.reshape(-1)[0])

    def __float__(self):
        return self._host_scalar(float)

    def __int__(self):
        return self._host_scalar(int)

    def __bool__(self):
        return self._host_scalar(bool)

    def item(self):
        _sync()
        return self._a.item()

    def get(self, stream=None, order="C", out=None, blocking=True):
        _sync()
        if out is not None:                       # into a host array (pinned, say)
            if not isinstance(out, np.ndarray) or out.shape != self.shape or out.dtype != self.dtype:
                raise ValueError("cupy.ndarray.get: out must be a NumPy array of the same shape and dtype")
            out[...] = self._a
            return out
        return self._a.copy(order=order)

    def set(self, arr, stream=None):
        """Copy a host array in (CuPy's ndarray.set): one host -> device copy."""
        if not isinstance(arr, np.ndarray) or arr.shape != self.shape or arr.dtype != self.dtype:
            raise ValueError("cupy.ndarray.set: arr must be a NumPy array of the same shape and dtype")
        self._a[...] = arr
        _op()

    def tolist(self):
        _sync()
        return self._a.tolist()

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__" or ufunc.__name__ not in API_FUNCTIONS:
            return NotImplemented
        return _module_function(ufunc.__name__)(*inputs, **kwargs)

    def __array_function__(self, func, types_, args, kwargs):
        name = func.__name__
        if name not in API_FUNCTIONS:
            raise TypeError(f"numpy.{name} was called on a CuPy array, and real CuPy has no "
                            f"cupy.{name} to dispatch it to (CuPy stand-in)")
        return _module_function(name)(*args, **kwargs)

    # ------------------------------------------------------------------ arithmetic
    def _binary(self, other, op, reflected=False):
        _no_host_arrays(other, f"cupy.ndarray {op}")
        a, b = self._a, _unwrap(other)
        args = (other, self) if reflected else (self, other)
        if reflected:
            a, b = b, a
        out = _wrap(getattr(np, op)(a, b), ())
        if op == "matmul":
            _count_matmul(a, b)
            _op(extra_launches("matmul", (other, self) if reflected else (self, other), {}))
        else:
            _record("ufunc", name=op, args=[_spec(x) for x in args], outputs=[_spec(out)])
        return out

    def _inplace(self, other, op):
        _no_host_arrays(other, f"cupy.ndarray in-place {op}")
        getattr(np, op)(self._a, _unwrap(other), out=self._a)
        _op()
        _record("ufunc", name=op, args=[_spec(self), _spec(other)], outputs=[_spec(self)])
        return self

    def __neg__(self):
        return _wrap(-self._a)

    def __abs__(self):
        return _wrap(np.abs(self._a))

    def __invert__(self):
        return _wrap(~self._a)

    def __matmul__(self, other):
        if _state.fusing:
            raise TypeError("cupy.fuse: matmul is not an elementwise operation")
        return self._binary(other, "matmul")

    def __rmatmul__(self, other):
        return self._binary(other, "matmul", reflected=True)

    # ----------------------------------------------------------- indexing
    def __getitem__(self, key):
        _no_host_arrays(key, "cupy.ndarray indexing")
        if _state.fusing:
            raise TypeError("cupy.fuse: indexing is not supported inside a fused function")
        _op(_index_launches(key))
        return _wrap(self._a[_unwrap(key)], (self._a,))

    def __setitem__(self, key, value):
        _no_host_arrays(key, "cupy.ndarray indexing")
        _no_host_arrays(value, "cupy.ndarray.__setitem__ (assigning into a device array)")
        if _state.fusing:
            raise TypeError("cupy.fuse: indexing is not supported inside a fused function")
        self._a[_unwrap(key)] = _unwrap(value)
        _op(1 + _index_launches(key))

    # -------------------------------------------------------------- other methods
    def __getattr__(self, name):
        spec = API_METHODS.get(name)
        if spec is None or spec["kind"] != "method":
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r} in real CuPy "
                                 f"(tests/cupy_api/cupy_api.json)")
        target = getattr(self._a, name)

        def method(*args, **kwargs):
            _check_kwargs(f"ndarray.{name}", spec["params"], kwargs)
            _no_host_arrays(args, f"cupy.ndarray.{name}")
            _no_host_arrays(list(kwargs.values()), f"cupy.ndarray.{name}")
            _check_fusable(name, {})
            if name == "fill":
                self._a.fill(_unwrap(args[0]))
                _op()
                return None
            if name == "copy":
                return _wrap(self._a.copy(*args, **kwargs))
            _op(extra_launches(name, (self, *args), kwargs))
            out = _wrap(target(*_unwrap(args), **_unwrap(kwargs)), (self._a,))
            _record("call", name=f"ndarray.{name}", args=[_spec(self)] + [_spec(a) for a in args],
                    outputs=[_spec(out)], asked=_asks_dtype(args, kwargs))
            return out
        return method


_BINARY = {"add": "add", "sub": "subtract", "mul": "multiply", "truediv": "true_divide",
           "floordiv": "floor_divide", "pow": "power", "mod": "remainder", "and": "bitwise_and",
           "or": "bitwise_or", "xor": "bitwise_xor", "lt": "less", "le": "less_equal",
           "gt": "greater", "ge": "greater_equal", "eq": "equal", "ne": "not_equal"}
for _short, _ufunc in _BINARY.items():
    setattr(ndarray, f"__{_short}__", lambda self, o, _u=_ufunc: self._binary(o, _u))
    if _short not in ("lt", "le", "gt", "ge", "eq", "ne"):
        setattr(ndarray, f"__r{_short}__", lambda self, o, _u=_ufunc: self._binary(o, _u, True))
        setattr(ndarray, f"__i{_short}__", lambda self, o, _u=_ufunc: self._inplace(o, _u))
ndarray.__hash__ = None


# -------------------------------------------------------------------- module functions

def asarray(a, dtype=None, order=None, *, copy=None, blocking=False):
    if isinstance(a, ndarray):
        out = a._a if dtype is None else a._a.astype(dtype, copy=False)
        return ndarray(out) if out is a._a else _wrap(out)
    _op()                                  # a host -> device copy
    return ndarray(np.array(_unwrap(a), dtype=dtype, order=order or "K", copy=True))


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    if isinstance(obj, ndarray):
        return _wrap(np.array(obj._a, dtype=dtype, copy=True, order=order, ndmin=ndmin))
    _op()
    return ndarray(np.array(obj, dtype=dtype, copy=True, order=order, ndmin=ndmin))


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    if isinstance(a, ndarray):
        _sync()
        return np.array(a._a, order=order, copy=True)
    return np.asarray(a, order=order)


def get_array_module(*args):
    return __import__(__name__) if any(isinstance(a, ndarray) for a in args) else np


def empty(shape, dtype=float, order="C"):
    return ndarray(np.empty(shape, dtype=dtype, order=order))      # allocation: no kernel


def empty_like(a, dtype=None, order="K", subok=None, shape=None):
    _no_host_arrays(a, "cupy.empty_like")
    return ndarray(np.empty_like(a._a, dtype=dtype, shape=shape))


def fuse(*args, kernel_name=None):
    """cupy.fuse: the body runs with strict arrays, elementwise only, counted as one op."""
    def decorate(func):
        def fused(*inputs):
            if not any(isinstance(i, ndarray) for i in inputs):
                raise TypeError("cupy.fuse: a fused function needs at least one device array")
            _no_host_arrays(inputs, f"the fused function {kernel_name or func.__name__}")
            args = [_spec(i) for i in inputs]          # before the body changes them in place
            _state.fusing += 1
            try:
                out = func(*inputs)
            finally:
                _state.fusing -= 1
            _op()
            outputs = out if isinstance(out, tuple) else (out,)
            _record("fuse", name=kernel_name or func.__name__, func=func, args=args,
                    outputs=[_spec(o) for o in outputs])
            return out
        fused.__name__ = kernel_name or func.__name__
        return fused
    if len(args) == 1 and callable(args[0]):
        return decorate(args[0])
    return decorate


ndarray_type = ndarray
_SPECIAL = {"asarray": asarray, "array": array, "asnumpy": asnumpy, "ndarray": ndarray,
            "get_array_module": get_array_module, "empty": empty, "empty_like": empty_like,
            "fuse": fuse}
_cache = {}


def _module_function(name):
    if name in _cache:
        return _cache[name]
    spec = API_FUNCTIONS.get(name)
    if spec is None:
        raise AttributeError(f"module 'cupy' has no attribute {name!r} in real CuPy "
                             f"(tests/cupy_api/cupy_api.json)")
    if name in _SPECIAL:
        return _SPECIAL[name]
    if spec["kind"] in ("type", "value", "module"):
        return getattr(np, name)          # dtypes (cupy.float32 is numpy.float32), constants
    np_func = getattr(np, name, None)
    if np_func is None:
        raise AttributeError(f"the CuPy stand-in has no NumPy twin for cupy.{name}")
    is_ufunc = spec["kind"] == "ufunc"

    def call(*args, **kwargs):
        _check_kwargs(f"cupy.{name}", sorted(UFUNC_KWARGS) if is_ufunc else spec.get("params"), kwargs)
        _no_host_arrays(args, f"cupy.{name}")
        _no_host_arrays(list(kwargs.values()), f"cupy.{name}")
        _check_fusable(name, spec)
        if is_ufunc and len(args) > spec["nin"] + spec["nout"]:
            raise TypeError(f"cupy.{name} takes {spec['nin']} inputs")
        out = kwargs.get("out")
        _op(extra_launches(name, args, kwargs))
        if name == "matmul":
            _count_matmul(*args[:2])
        result = np_func(*_unwrap(args), **_unwrap(kwargs))
        if is_ufunc:
            _record("ufunc", name=name, args=[_spec(a) for a in args[:spec["nin"]]],
                    outputs=[_spec(out if out is not None else result)])
        if out is not None:
            _op()
            return out
        if result is None:             # written in place (copyto)
            _op()
            return None
        wrapped = _wrap(result, _flat_inputs(args))
        if not is_ufunc:
            _record("call", name=name, args=[_spec(a) for a in args], outputs=[_spec(wrapped)],
                    asked=_asks_dtype(args, kwargs))
        return wrapped
    call.__name__ = name
    _cache[name] = call
    return call


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _module_function(name)


# cupy.cuda: DEVICES devices (the last one made current is remembered), whose synchronize
# is a host sync; a stream; pinned host memory
DEVICES = 1
CURRENT = types.SimpleNamespace(device=0)


class _Device:
    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)
        if not 0 <= self.id < DEVICES:
            raise ValueError(f"cudaErrorInvalidDevice: invalid device ordinal {self.id} (CuPy stand-in)")

    def use(self):
        CURRENT.device = self.id

    def synchronize(self):
        _sync()


class _Stream:
    def synchronize(self):
        _sync()


cuda = types.SimpleNamespace(
    runtime=types.SimpleNamespace(getDeviceCount=lambda: DEVICES),
    Device=_Device,
    get_current_stream=lambda: _Stream(),
    alloc_pinned_memory=lambda nbytes: bytearray(nbytes))


def _erf(x, out=None):
    _no_host_arrays(x, "cupyx.scipy.special.erf")
    if _state.fusing:
        return ndarray(scipy.special.erf(x._a))
    return _wrap(scipy.special.erf(_unwrap(x)))


erf = _erf        # cupyx.scipy.special.erf


def install(monkeypatch):
    """Make minivit's backend use this module as CuPy (and its erf) for one test."""
    import sys
    from minivit.engine import backend
    module = sys.modules[__name__]
    monkeypatch.setattr(backend, "_cupy", module)
    monkeypatch.setattr(backend, "_cupy_error", None)
    monkeypatch.setattr(backend, "_cupy_erf", _erf)
    COUNTS.reset()
    return module
