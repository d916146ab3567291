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

from ..engine.backend import erf_function, kernel
from ..engine.layers import GELU_TANH_COEF, SQRT_2_OVER_PI


# the switch: MINIVIT_NO_BLOCKED_GELU=1 (or kernels.BLOCKED_GELU = False) turns the blocked GELU off
BLOCKED_GELU = not os.environ.get("MINIVIT_NO_BLOCKED_GELU")

BLOCK = 1 << 16          # elements per block: 256 KiB of float32
MIN_SIZE = 1 << 12       # from 4,096 elements on the blocked path is the faster (benchmarks/
                         # RESULTS.md); smaller arrays take the plain body

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
