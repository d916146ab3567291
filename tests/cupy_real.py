"""Real CuPy without a GPU: replay what the CuPy path did through CuPy's own type rules,
code generator and compiler.

The strict stand-in (cupy_strict.py) runs minivit's CuPy path with NumPy's numbers and
records every device operation (`cupy_strict.recording()`). This module takes those
records to the installed CuPy, which needs no device until a kernel launches:

- arrays are real `cupy.ndarray`s over fake device memory (`cupy.cuda.UnownedMemory` at an
  address nothing reads), so CuPy sees the shapes, dtypes and strides of the run;
- a fused function is traced by CuPy's fusion (`cupy._core.fusion`), exactly as
  `cupy.fuse` traces it on its first call: the result is the `ElementwiseKernel` a GPU
  would run, with the CUDA code CuPy generated for it;
- that code is compiled by NVRTC (shipped with `cupy-cuda12x[ctk]`) to PTX for
  compute_80, which needs no GPU either;
- a ufunc outside a fused function is typed by CuPy's own loop search
  (`ufunc._ops._guess_routine_from_in_types`, with CuPy's weak-scalar rule).

`check(records, dtype)` returns the problems found, as sentences: a kernel CuPy cannot
build, float16 in generated code, an output dtype other than the one the stand-in (NumPy's
rules) produced, a compile error (for compute_80 and compute_90), and any operation (a
reduction, a matmul, ...) whose floating result is not the run's dtype although no input
had that dtype and the code did not name it.
"""

import functools
import re

import numpy as np

import cupy
from cupy._core import _fusion_thread_local, _kernel, _scalar, fusion
from cupy.cuda import compiler

ARCHS = ("80", "90")        # Ampere and Hopper: NVRTC compiles for both, no GPU needed
_next_address = [1 << 40]
_ptx = {}                  # source -> PTX (or the compile error), for the whole session


def fake_array(shape, dtype):
    """A real cupy.ndarray of this shape and dtype over device memory that does not exist
    (fine until a kernel launches, which nothing here does)."""
    nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    address = _next_address[0]
    _next_address[0] += (nbytes + 1023) // 512 * 512
    memory = cupy.cuda.UnownedMemory(address, nbytes, None, 0)
    return cupy.ndarray(shape, dtype=dtype, memptr=cupy.cuda.MemoryPointer(memory, 0))


def _is_array(spec):
    return isinstance(spec, tuple) and len(spec) == 3 and spec[0] == "array"


def _real(spec):
    """A recorded argument as real CuPy takes it."""
    if _is_array(spec):
        return fake_array(spec[1], spec[2])
    return spec


# ------------------------------------------------------------------------- fusion

def trace(func, args, name):
    """What cupy.fuse(func) builds on its first call with these arguments: the kernel
    (an ElementwiseKernel) and the keyword arguments it is launched with."""
    history = fusion._FusionHistory()
    local = _fusion_thread_local.thread_local
    local.history, local.is_old_fusing = history, True
    try:
        return history.get_fusion(func, args, name)
    finally:
        local.history, local.is_old_fusing = None, False


def kernel_source(kern, args):
    """The CUDA source CuPy generates for launching kern on args (as _kernel.pyx does)."""
    args = [a for a in args if a is not None]
    ndim = max(a.ndim for a in args if isinstance(a, cupy.ndarray))
    in_dtypes = tuple(a.dtype if isinstance(a, cupy.ndarray) else None for a in args)
    in_types, out_types, type_map = kern._decide_params_type(in_dtypes, ())
    infos = []
    for a, t in zip(args, in_types):
        if isinstance(a, cupy.ndarray):
            infos.append(_kernel._ArgInfo(1, cupy.ndarray, a.dtype, ndim, True, True))
        else:
            infos.append(_kernel._ArgInfo(3, _scalar.CScalar, np.dtype(t), 0, True, True))
    infos += [_kernel._ArgInfo(1, cupy.ndarray, np.dtype(t), ndim, True, True) for t in out_types]
    infos.append(_kernel._ArgInfo(2, cupy._core._carray.Indexer, None, ndim, True, True))
    code = _kernel._get_elementwise_kernel_code(
        tuple(infos), type_map, kern.params, kern.operation, kern.name, kern.preamble, **kern.kwargs)
    headers = "".join(f"#include <{h}>\n" for h in
                      ("cupy/complex.cuh", "cupy/carray.cuh", "cupy/atomics.cuh", "cupy/math_constants.h"))
    return headers + code, out_types


def compile_ptx(source, arch=ARCHS[0]):
    """NVRTC: source -> PTX for compute_{arch}, with CuPy's headers and options. Raises
    compiler.CompileException on an error."""
    key = (source, arch)
    if key not in _ptx:
        options = _kernel.cupy._core.core.assemble_cupy_compiler_options(()) + (
            "--device-as-default-execution-space", f"-arch=compute_{arch}")
        program = compiler._NVRTCProgram(source, "kern.cu", (), (), name_expressions=None, method="ptx")
        try:
            _ptx[key] = program.compile(options)[0]
        except compiler.CompileException as e:
            _ptx[key] = e
    if isinstance(_ptx[key], Exception):
        raise _ptx[key]
    return _ptx[key]


FLOAT16 = re.compile(r"\b(float16|half|__half)\b")
SUBMODULE = re.compile(r"__device__ void \w+\([^)]*\)")      # a ufunc's typed function


def _real_body(func):
    """The fused function the stand-in ran (body partial'ed with the stand-in module),
    with real CuPy as its xp."""
    if isinstance(func, functools.partial) and func.args and getattr(func.args[0], "__name__", "") == "cupy_strict":
        return functools.partial(func.func, cupy, *func.args[1:], **func.keywords)
    return func


def check_fused(record):
    """Problems of one fused call: -> list of sentences (empty when CuPy builds it right)."""
    args = [_real(a) for a in record.args]
    where = f"fused kernel {record.name}({', '.join(_describe(a) for a in record.args)})"
    try:
        kern, _ = trace(_real_body(record.func), args, record.name)
    except Exception as e:
        return [f"{where}: real CuPy cannot build it: {type(e).__name__}: {e}"]
    if not isinstance(kern, cupy.ElementwiseKernel):
        return [f"{where}: real CuPy built a {type(kern).__name__}, not one elementwise kernel"]
    source, out_types = kernel_source(kern, args)
    problems = []
    typed = kern.operation + "\n".join(SUBMODULE.findall(kern.preamble))
    found = sorted(set(FLOAT16.findall(typed)))
    if found:
        lines = [l for l in kern.operation.splitlines() if FLOAT16.search(l)]
        problems.append(f"{where}: the generated code computes in float16 ({', '.join(found)}), "
                        f"e.g. `{lines[0].strip() if lines else found[0]}`: an operation between "
                        f"two Python numbers inside cupy.fuse; compute it on the host and pass it in")
    wanted = [o[2] for o in record.outputs if _is_array(o)]
    got = [np.dtype(t) for t in out_types]
    if wanted != got[:len(wanted)]:
        problems.append(f"{where}: real CuPy returns {[str(t) for t in got]}, the stand-in "
                        f"(NumPy's rules) {[str(t) for t in wanted]}")
    for arch in ARCHS:
        try:
            compile_ptx(source, arch)
        except compiler.CompileException as e:
            problems.append(f"{where}: NVRTC cannot compile the generated code for compute_{arch}: "
                            f"{str(e)[:400]}")
    return problems


# -------------------------------------------------------------------------- ufuncs

def _kind(t):
    """CuPy's kind score: bool < integers < floats < complex (a Python type or a dtype)."""
    if t in (bool, int, float, complex):
        return (bool, int, float, complex).index(t)
    return {"b": 0, "u": 1, "i": 1, "f": 2, "c": 3}[np.dtype(t).kind]


def ufunc_out_types(name, args):
    """The output dtypes real CuPy's ufunc `name` picks for these arguments (the loop
    search of _kernel.pyx's guess_routine, with its weak-scalar rule)."""
    ufunc = getattr(cupy, {"true_divide": "divide"}.get(name, name))
    in_types, weaks = [], []
    for a in args:
        if _is_array(a):
            in_types.append(np.dtype(a[2]))
            weaks.append(False)
        elif isinstance(a, (bool, int, float, complex)):
            in_types.append(np.dtype(_scalar.numpy_dtype_from_pyscalar(a)[0]))
            weaks.append(type(a))
        else:
            in_types.append(np.asarray(a).dtype)
            weaks.append(False)
    scalar_kinds = [_kind(w) for w in weaks if w]
    array_kinds = [_kind(t) for t, w in zip(in_types, weaks) if not w]
    use_weak = scalar_kinds and array_kinds and max(array_kinds) >= max(scalar_kinds)
    op = ufunc._ops._guess_routine_from_in_types(
        tuple(in_types), tuple(weaks) if use_weak else None)
    if op is None:
        raise TypeError(f"no loop of cupy.{name} takes {[str(t) for t in in_types]}")
    return [np.dtype(t) for t in op.out_types]


def check_ufunc(record):
    where = f"cupy.{record.name}({', '.join(_describe(a) for a in record.args)})"
    try:
        got = ufunc_out_types(record.name, record.args)
    except Exception as e:
        return [f"{where}: real CuPy cannot type it: {type(e).__name__}: {e}"]
    wanted = [o[2] for o in record.outputs if _is_array(o)]
    if wanted and got[0] != wanted[0]:
        return [f"{where}: real CuPy computes {got[0]}, the stand-in (NumPy's rules) {wanted[0]}"]
    return []


# -------------------------------------------------------------------------- checks

def _describe(spec):
    if _is_array(spec):
        return f"{spec[2]}{list(spec[1])}"
    return f"{type(spec).__name__} {spec!r}"


def _key(record):
    """Records that real CuPy would type and compile alike."""
    args = tuple((a[0], len(a[1]), str(a[2])) if _is_array(a) else type(a).__name__
                 for a in record.args)
    ident = record.func if record.kind == "fuse" else (record.name, getattr(record, "asked", None))
    if isinstance(ident, functools.partial):
        ident = ident.func
    return record.kind, ident, args


def unique(records):
    seen = {}
    for r in records:
        seen.setdefault(_key(r), r)
    return list(seen.values())


def check(records, dtype=None):
    """Every problem real CuPy finds in these records (fused kernels and ufuncs), plus any
    floating-point result other than `dtype` (the run's) where the code did not ask for
    one. -> (problems, counts {"fuse": n, "ufunc": n} of distinct operations checked)."""
    from minivit.engine import backend
    from cupyx.scipy.special import erf
    problems, counts = [], {"fuse": 0, "ufunc": 0, "call": 0}
    saved, backend._cupy_erf = backend._cupy_erf, erf     # the fused GELU's erf: CuPy's own
    try:
        for record in unique(records):
            counts[record.kind] += 1
            if record.kind == "fuse":
                problems += check_fused(record)
            elif record.kind == "ufunc":
                problems += check_ufunc(record)
            if dtype is not None and not getattr(record, "asked", False):   # a float dtype
                # that no input had and the code did not name: promoted
                had = {a[2] for a in record.args if _is_array(a)}
                for out in record.outputs:
                    if _is_array(out) and out[2].kind == "f" and out[2] != np.dtype(dtype) \
                            and out[2] not in had:
                        problems.append(f"{record.kind} {record.name}({', '.join(_describe(a) for a in record.args)}) "
                                        f"gives {out[2]} in a {dtype} run")
    finally:
        backend._cupy_erf = saved
    return problems, counts
