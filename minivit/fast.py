"""CPU speed paths: the math of layers.py, evaluated block by block in the cache.

NumPy runs an expression one operation at a time over the whole array. For an MLP
activation of the default ViT ([80, 65, 768] float32, 16 MiB) every operation streams the
array from memory and back, so a chain of ten operations costs ten trips. Running the
same chain on blocks of BLOCK elements (256 KiB, inside the L2 cache) pays the memory trip
once. And SciPy's erf computes in double precision, elementwise in C (about 20 ns an
element here); float32 needs far less. GELU needs exp(-x^2/2) anyway (for its derivative),
and that is the exponential inside Abramowitz & Stegun's formula 7.1.26 for erfc, so
`normal_cdf` gets Phi(x) from it with a short polynomial (erf to within 1.5e-7).

These paths serve float32 arrays on NumPy only; float64 (used by the gradient checks)
and CuPy always take the plain code in layers.py, and the tests check that both agree.
"""

import math
import os

import numpy as np

# the switch: MINIVIT_NO_FAST=1 (or fast.ENABLED = False) sends everything down the plain path
ENABLED = not os.environ.get("MINIVIT_NO_FAST")

BLOCK = 1 << 16          # elements per block: 256 KiB of float32
MIN_SIZE = 4 * BLOCK     # smaller arrays are not worth blocking

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# Abramowitz & Stegun 7.1.26: for z >= 0,
#     erfc(z) ~ t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) exp(-z^2),   t = 1 / (1 + p z),
# with absolute error below 1.5e-7. With z = |x| / sqrt(2), exp(-z^2) = exp(-x^2 / 2).
_AS_P = np.float32(0.3275911 / math.sqrt(2.0))          # p, folded with the 1/sqrt(2)
_AS_A = tuple(np.float32(a) for a in (0.254829592, -0.284496736, 1.421413741,
                                      -1.453152027, 1.061405429))
_F32 = np.float32


def applies(x):
    """True when x should take a fast path: a big float32 NumPy array."""
    return ENABLED and type(x) is np.ndarray and x.dtype == np.float32 and x.size >= MIN_SIZE


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


def gelu_forward(x):
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
