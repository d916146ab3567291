"""The fast path's elementwise kernels: each a plain function of arrays, one kernel on the
GPU (`@kernel`, engine/backend.py), and the blocked GELU of the CPU.

The blocked GELU (NumPy, float32): NumPy runs an expression one operation at a time over
the whole array. For an MLP activation of the default ViT ([80, 65, 768] float32, 16 MiB)
every operation streams the array from memory and back, so a chain of ten operations
costs ten trips. Running the same chain on blocks of BLOCK elements (256 KiB, inside the
L2 cache) pays the memory trip once. And SciPy's erf computes in double precision,
elementwise in C; float32 needs far less. GELU needs
exp(-x^2/2) anyway (for its derivative), and that is the exponential inside Abramowitz &
Stegun's formula 7.1.26 for erfc, so `normal_cdf` gets Phi(x) from it with a short
polynomial (erf to within 1.5e-7 in exact arithmetic; Phi in float32 to within 4e-7,
3.6e-7 at worst, near x = 0.033).
"""

import math
import os

import numpy as np

from ..engine.backend import erf_function, kernel, to_device
from ..engine.layers import GELU_TANH_COEF, SQRT_2_OVER_PI


# the switch: MINIVIT_NO_BLOCKED_GELU=1 (or kernels.BLOCKED_GELU = False) turns the blocked GELU off
BLOCKED_GELU = not os.environ.get("MINIVIT_NO_BLOCKED_GELU")

BLOCK = 1 << 16          # elements per block: 256 KiB of float32
MIN_SIZE = 1 << 12       # from 4,096 elements on the blocked path is the faster (benchmarks/
                         # archive/RESULTS-log.md); smaller arrays take the plain body

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# Abramowitz & Stegun 7.1.26: for z >= 0,
#     erfc(z) ~ t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) exp(-z^2),   t = 1 / (1 + p z),
# with absolute error below 1.5e-7 in exact arithmetic (in float32, Phi below 4e-7).
# With z = |x| / sqrt(2), exp(-z^2) = exp(-x^2 / 2).
_AS_P = np.float32(0.3275911 / math.sqrt(2.0))          # p, folded with the 1/sqrt(2)
_AS_A = tuple(np.float32(a) for a in (0.254829592, -0.284496736, 1.421413741,
                                      -1.453152027, 1.061405429))
_F32 = np.float32


def takes_blocked_gelu(x):
    """True when x should take the blocked GELU: a float32 NumPy array of MIN_SIZE
    elements or more."""
    return BLOCKED_GELU and type(x) is np.ndarray and x.dtype == np.float32 and x.size >= MIN_SIZE


def normal_cdf(x, gauss):
    """Phi(x) of a float32 block, given gauss = exp(-x^2 / 2).

    Phi(x) = (1 + erf(x / sqrt 2)) / 2, and erf(z) = sign(z) (1 - erfc(|z|)) with erfc
    from the formula above."""
    t = np.abs(x)
    t *= _AS_P
    t += _F32(1)
    np.reciprocal(t, out=t)                       # t = 1 / (1 + p |z|)
    q = t * _AS_A[4]                              # Horner's rule in t
    for a in _AS_A[3::-1]:
        q += a
        q *= t
    q *= gauss                                    # erfc(|z|)
    np.subtract(_F32(1), q, out=q)                # erf(|z|)
    np.copysign(q, x, out=q)                      # erf(z)
    q += _F32(1)
    q *= _F32(0.5)
    return q


def _blocks(n):
    for start in range(0, n, BLOCK):
        yield slice(start, min(n, start + BLOCK))


def blocked_gelu(x):
    """Block by block: y = x Phi(x) and its derivative GELU'(x) = Phi(x) + x phi(x), with
    phi(x) = exp(-x^2 / 2) / sqrt(2 pi): one exponential serves Phi and phi.
    Returns (y, dgelu); the backward is then dx = dy * dgelu."""
    xf = np.ascontiguousarray(x).reshape(-1)
    y, dgelu = np.empty_like(xf), np.empty_like(xf)
    for s in _blocks(xf.size):
        xs, g = xf[s], dgelu[s]
        np.multiply(xs, xs, out=g)
        g *= _F32(-0.5)
        np.exp(g, out=g)                          # exp(-x^2 / 2)
        cdf = normal_cdf(xs, g)
        np.multiply(xs, cdf, out=y[s])            # GELU(x) = x Phi(x)
        g *= _F32(_INV_SQRT_2PI)                  # phi(x)
        g *= xs
        g += cdf                                  # GELU'(x) = Phi(x) + x phi(x)
    return y.reshape(x.shape), dgelu.reshape(x.shape)


# ------------------------------------------------------------------------------ sums
# NumPy sums along a short last axis (LayerNorm's 96 channels, softmax's 65 keys) one row
# at a time, an inner-loop call per row; BLAS's matrix-vector product with a vector of
# ones sums the same rows about 5x faster ([8320, 96] float32: 0.26 ms against 0.05 on
# one core, benchmarks/archive/RESULTS-log.md), and the columns of a [M, D] gradient 3x faster. On
# the GPU a sum is one reduction kernel, as a product would be: there it stays a sum.

_ONES = {}           # dtype -> a read-only vector of ones, grown to the longest asked for


def _ones(n, dtype):
    """A read-only NumPy vector of n ones (a view of the dtype's longest one)."""
    dtype = np.dtype(dtype)
    if len(_ONES.get(dtype, ())) < n:
        ones = np.ones(n, dtype=dtype)
        ones.flags.writeable = False
        _ONES[dtype] = ones
    return _ONES[dtype][:n]


def _by_blas(x):
    return type(x) is np.ndarray and x.flags.c_contiguous and x.dtype.kind == "f"


def row_sums(x):
    """x [..., n] -> [..., 1]: x.sum(axis=-1, keepdims=True)."""
    if not _by_blas(x):
        return x.sum(axis=-1, keepdims=True)
    n = x.shape[-1]
    return (x.reshape(-1, n) @ _ones(n, x.dtype)).reshape(*x.shape[:-1], 1)


def column_sums(x2, out):
    """x2 [M, D] -> out [D]: x2.sum(axis=0, out=out)."""
    if not (_by_blas(x2) and type(out) is np.ndarray):
        return x2.sum(axis=0, out=out)
    return np.matmul(_ones(x2.shape[0], x2.dtype), x2, out=out)


# ------------------------------------------------------------------------- LayerNorm
# Row means enter as row sums and inv_d = 1/D: a sum is one reduction kernel, a mean
# through CuPy's CUB path is a sum and a division. rstd = 1/sqrt(var + eps) is recomputed
# from the variance's sum wherever it is used, inside the kernel that uses it.

@kernel
def squared_deviation(xp, x, x_sum, inv_d):
    """(x - mean)^2, mean = x_sum / D."""
    d = x - x_sum * inv_d
    return d * d


@kernel
def layernorm_apply(xp, x, x_sum, var_sum, w, b, inv_d, eps):
    """-> (y, xhat): xhat = (x - mean) / sqrt(var + eps), y = xhat w + b, with
    mean = x_sum / D and var = var_sum / D."""
    xhat = (x - x_sum * inv_d) / xp.sqrt(var_sum * inv_d + eps)
    return xhat * w + b, xhat


@kernel
def layernorm_backward_parts(xp, dy, w, xhat):
    """-> (g, g xhat, dy xhat) with g = dy w."""
    g = dy * w
    return g, g * xhat, dy * xhat


@kernel
def layernorm_backward_dx(xp, g, xhat, g_sum, gx_sum, var_sum, inv_d, eps, dres):
    """dx = rstd (g - mean(g) - xhat mean(g xhat)) plus a residual gradient dres, with
    rstd = 1 / sqrt(var_sum / D + eps) and the means as sums / D."""
    rstd = 1.0 / xp.sqrt(var_sum * inv_d + eps)
    return rstd * (g - g_sum * inv_d - xhat * (gx_sum * inv_d)) + dres


# --------------------------------------------------------------------------- softmax

@kernel
def scaled_exp(xp, s, s_max, scale):
    """exp((s - max s) scale): softmax(scale s) before normalizing (scale > 0)."""
    return xp.exp((s - s_max) * scale)


@kernel
def softmax_backward_ds(xp, da, a, sum_da_a, scale):
    """ds of softmax(scale s): scale a (da - sum(da a))."""
    return a * (da - sum_da_a) * scale


# ------------------------------------------------------------------------------ GELU

_SQRT_HALF = math.sqrt(0.5)


def _gelu_bias_numpy(h, b):
    z = h + b
    if takes_blocked_gelu(z):
        return blocked_gelu(z)
    return gelu_bias.body(np, h, b)


def _gelu_bias(xp, h, b):
    """z = h + b -> (GELU(z), GELU'(z)), exact: z Phi(z) and Phi(z) + z phi(z)."""
    z = h + b
    cdf = 0.5 * (1.0 + erf_function(xp)(z * _SQRT_HALF))
    return z * cdf, cdf + z * xp.exp(-0.5 * z * z) * _INV_SQRT_2PI


gelu_bias = kernel(_gelu_bias, numpy=_gelu_bias_numpy)


@kernel
def gelu_tanh_bias(xp, h, b):
    """z = h + b -> (GELU(z), GELU'(z)), tanh approximation."""
    z = h + b
    t = xp.tanh(SQRT_2_OVER_PI * (z + GELU_TANH_COEF * z * z * z))
    du = SQRT_2_OVER_PI * (1.0 + 3 * GELU_TANH_COEF * z * z)
    return 0.5 * z * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * du


# ------------------------------------------------------------------------- residuals

@kernel
def residual(xp, x, h, b, k):
    """x + k (h + b): a branch's output h plus its bias, scaled by stochastic depth's
    mask k (1 without it), added to the stream x."""
    return x + k * (h + b)


@kernel
def scale(xp, x, k):
    return x * k


# --------------------------------------------------- the GPU's layouts (runner.py's *_gpu)
# On the GPU every kernel, reduction and operand copy is a launch, and a launch costs
# more than this model's arithmetic. So results that are summed along the same axis are
# written by one kernel as slots of one array, slot first ([k, ..., D], each slot
# contiguous), and summed by one reduction (`slot`: a device array [k, 1, ..., 1] holding
# 0, 1, ..., k-1); and a kernel that reads arrays through transposed views writes its
# result into `out`, a C-contiguous array, so that no batched product has to copy an
# operand (such kernels return nothing). Constants such as `slot` are made once:

_CONSTANTS = {}


def constant(xp, key, make):
    """A small constant array on xp's device (make() builds it on the host), made once per
    backend and key: on the GPU a copy from the host is a launch, not to be made each step."""
    if (xp, key) not in _CONSTANTS:
        _CONSTANTS[(xp, key)] = to_device(make(), xp)
    return _CONSTANTS[(xp, key)]


@kernel
def layernorm_backward_rows(xp, dy, w, xhat, slot):
    """[2, ..., D]: g = dy w in slot 0 and g xhat in slot 1 (their row sums in one
    reduction)."""
    g = dy * w
    return xp.where(slot == 0, g, g * xhat)


@kernel
def layernorm_backward_dx_slots(xp, g, xhat, g_sum, gx_sum, var_sum, inv_d, eps, dres, dy, slot):
    """[3, ..., D]: layernorm_backward_dx's dx in slot 0, dy xhat and dy in slots 1 and 2
    (their column sums are dw and db; slot 0's, the gradient of a bias whose output
    gradient is dx)."""
    dx = layernorm_backward_dx.body(xp, g, xhat, g_sum, gx_sum, var_sum, inv_d, eps, dres)
    return xp.where(slot == 0, dx, xp.where(slot == 1, dy * xhat, dy))


@kernel
def layernorm_backward_dx_slots_rows(xp, g, xhat, g_sum, gx_sum, var_sum, inv_d, eps, dres, rows,
                                     dy, slot):
    """layernorm_backward_dx_slots with the residual gradient dres added only where rows
    (a bool array [N, 1]) is True: the class token's row, in the class-token-only block."""
    return layernorm_backward_dx_slots.body(xp, g, xhat, g_sum, gx_sum, var_sum, inv_d, eps,
                                            xp.where(rows, dres, 0.0), dy, slot)


@kernel
def scaled_exp_into(xp, out, s, s_max, scale):
    """out = scaled_exp(s, s_max, scale)."""
    xp.exp((s - s_max) * scale, out=out)


@kernel
def attention_backward_do(xp, do_out, do_e_out, do, o, e_sum):
    """From views, in the heads' layout, of do (the output projection's input gradient) and
    o (its input): writes do_out = do and do_e_out = do / sum(e), for da = do v^T and
    dv = a^T do = e^T (do / sum(e)) -> do o, whose row sums are sum_j da_ij a_ij."""
    xp.multiply(do, 1.0, out=do_out)
    xp.divide(do, e_sum, out=do_e_out)
    return do * o


@kernel
def softmax_backward_ds_into(xp, out, da, e, e_sum, da_a_sum, scale):
    """out = softmax_backward_ds(da, a, da_a_sum, scale) with a = e / sum(e)."""
    xp.multiply((e / e_sum) * (da - da_a_sum), scale, out=out)


@kernel
def qkv_gradient_into(xp, out, slot, dq, dk, dv):
    """out [B, N, 3, h, d] (the in-projection's output layout) from views of dq, dk, dv in
    any layout: slot [.., 3, 1, 1] says which goes where (3: zero, the rows of q that did
    not ask)."""
    xp.positive(xp.where(slot == 0, dq, xp.where(slot == 1, dk, xp.where(slot == 2, dv, 0.0))),
                out=out)
