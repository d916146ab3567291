"""Area resizing, forward and backward: the smaller images of progressive resizing
(--low-res) and the position embedding that fits their smaller patch grid. The same
pattern as layers.py (docs/gradients.md, appendix A derives the backward passes):

    y, cache = area_resize_forward(x, size)      # [..., H, W] -> [..., size, size]
    dx = area_resize_backward(dy, cache)
"""

import functools
import math
from types import SimpleNamespace as Cache

import numpy as np

from .backend import array_module, to_device


@functools.lru_cache(maxsize=None)
def area_weights(n_in, n_out, xp=np, dtype=np.float64):
    """[n_out, n_in]: row i averages the inputs of cell i, [floor(i n_in / n_out),
    ceil((i + 1) n_in / n_out)), as torch's adaptive average pooling (32 -> 16: pairs).
    Built and copied to the backend once per sizes and dtype (kept: read-only)."""
    R = np.zeros((n_out, n_in))
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        R[i, lo:hi] = 1.0 / (hi - lo)
    R = to_device(R, xp, dtype)
    if xp is np:
        R.flags.writeable = False         # shared by every call: a write would be an error
    return R


def area_resize_forward(x, size):
    """Resize the last two axes of x [..., H, W] to [..., size, size] by area averaging:

        y = R_h x R_w^T,   R_h = area_weights(H, size), R_w = area_weights(W, size)

    one linear map per image and channel (a matrix product on each side)."""
    xp = array_module(x)
    Rh = area_weights(x.shape[-2], size, xp, x.dtype)                 # [size, H]
    Rw = area_weights(x.shape[-1], size, xp, x.dtype)                 # [size, W]
    return Rh @ x @ Rw.T, Cache(Rh=Rh, Rw=Rw)                         # [..., size, size]


def area_resize_backward(dy, cache):
    """y = R_h x R_w^T is linear in x, so dx = R_h^T dy R_w  [..., H, W]."""
    return cache.Rh.T @ dy @ cache.Rw


def pos_embed_resize_forward(pos_embed, grid):
    """The position embedding [1, 1 + full*full, D] of a full x full patch grid for a
    grid x grid one (smaller images): the class token's row as it is, the grid's rows
    area-resized as D channels of a full x full image -> [1, 1 + grid*grid, D]."""
    xp = array_module(pos_embed)
    D = pos_embed.shape[2]
    full = math.isqrt(pos_embed.shape[1] - 1)
    img = pos_embed[0, 1:].T.reshape(1, D, full, full)                 # [1, D, full, full]
    small, c_resize = area_resize_forward(img, grid)                   # [1, D, grid, grid]
    rows = small.reshape(D, grid * grid).T[None]                       # [1, grid*grid, D]
    return xp.concatenate([pos_embed[:, :1], rows], axis=1), Cache(resize=c_resize, full=full)


def pos_embed_for_grid(pos_embed, grid):
    """The position embedding for a grid x grid patch grid: pos_embed itself (cache None)
    when that is its own grid, else area-resized (pos_embed_resize_forward): progressive
    resizing trains on smaller images early."""
    if grid == math.isqrt(pos_embed.shape[1] - 1):
        return pos_embed, None
    return pos_embed_resize_forward(pos_embed, grid)


def pos_embed_resize_backward(dy, cache):
    """The class token's row passes through; the grid's rows go back through the resize."""
    xp = array_module(dy)
    D, grid = dy.shape[2], math.isqrt(dy.shape[1] - 1)
    dsmall = dy[0, 1:].T.reshape(1, D, grid, grid)                     # [1, D, grid, grid]
    dimg = area_resize_backward(dsmall, cache.resize)                  # [1, D, full, full]
    rows = dimg.reshape(D, cache.full * cache.full).T[None]            # [1, full*full, D]
    return xp.concatenate([dy[:, :1], rows], axis=1)                   # [1, 1 + full*full, D]
