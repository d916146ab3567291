"""CPU speed paths: the math of layers.py, evaluated block by block in the cache.

NumPy runs an expression one operation at a time over the whole array. For an MLP
activation of the default ViT ([80, 65, 768] float32, 16 MiB) every operation streams the
array from memory and back, so a chain of ten operations costs ten trips. Running the
same chain on blocks of BLOCK elements (256 KiB, inside the L2 cache) pays the memory trip
once. And SciPy's erf computes in double precision, elementwise in C (about 20 ns an
element here); float32 needs far less: `erf32` is the rational approximation that Eigen
and XLA use for float32, accurate to 5e-7.

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

_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# erf(x) ~ x P(x^2) / Q(x^2) on [-4, 4] (|erf| = 1 to float32 precision outside)
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
          -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
          -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
          -7.37332916720468e-03, -1.42647390514189e-02)


def applies(x):
    """True when x should take a fast path: a big float32 NumPy array."""
    return ENABLED and type(x) is np.ndarray and x.dtype == np.float32 and x.size >= MIN_SIZE


def erf32(x, out=None):
    """erf of a float32 block: x P(x^2) / Q(x^2) on x clipped to [-4, 4]."""
    x = np.clip(x, -4.0, 4.0)
    x2 = x * x
    num = x2 * _ERF_P[0]                          # Horner's rule in x^2
    num += _ERF_P[1]
    for c in _ERF_P[2:]:
        num *= x2
        num += c
    num *= x
    den = x2 * _ERF_Q[0]
    den += _ERF_Q[1]
    for c in _ERF_Q[2:]:
        den *= x2
        den += c
    return np.divide(num, den, out=out)


def _blocks(n):
    for start in range(0, n, BLOCK):
        yield slice(start, min(n, start + BLOCK))


def gelu_forward(x):
    """Block by block: y = x Phi(x) and its derivative GELU'(x) = Phi(x) + x phi(x), with
    Phi(x) = (1 + erf(x / sqrt 2)) / 2 and phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
    Returns (y, dgelu); the backward is then dx = dy * dgelu."""
    xf = np.ascontiguousarray(x).reshape(-1)
    y, dgelu = np.empty_like(xf), np.empty_like(xf)
    for s in _blocks(xf.size):
        xs, g = xf[s], dgelu[s]
        cdf = erf32(xs * np.float32(_INV_SQRT_2))
        cdf += 1.0
        cdf *= 0.5
        np.multiply(xs, cdf, out=y[s])
        np.multiply(xs, xs, out=g)          # x phi(x)
        g *= -0.5
        np.exp(g, out=g)
        g *= _INV_SQRT_2PI
        g *= xs
        g += cdf
    return y.reshape(x.shape), dgelu.reshape(x.shape)
