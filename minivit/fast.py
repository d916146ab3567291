"""Fast paths: the math of layers.py, computed with fewer passes over memory.

llm.c keeps a plain reference and checks its fast kernels against it; so does minivit.
layers.py and model.py are the reference; this file holds the faster ways to compute the
same numbers, and the tests check each against the reference:

- a blocked float32 GELU (NumPy), below;
- the last block on the class token alone, when the head reads it (exact);
- FastViT: the model's forward and backward through these, with each NumPy batch cut
  into one shard per CPU core (threads.py).

The blocked GELU:

NumPy runs an expression one operation at a time over the whole array. For an MLP
activation of the default ViT ([80, 65, 768] float32, 16 MiB) every operation streams the
array from memory and back, so a chain of ten operations costs ten trips. Running the
same chain on blocks of BLOCK elements (256 KiB, inside the L2 cache) pays the memory trip
once. And SciPy's erf computes in double precision, elementwise in C (about 20 ns an
element here); float32 needs far less. GELU needs exp(-x^2/2) anyway (for its derivative),
and that is the exponential inside Abramowitz & Stegun's formula 7.1.26 for erfc, so
`normal_cdf` gets Phi(x) from it with a short polynomial (erf to within 1.5e-7).

The blocked GELU serves float32 arrays on NumPy only; float64 (used by the gradient
checks) and CuPy take the plain code in layers.py, and the tests check that both agree.
"""

import math
import os
from types import SimpleNamespace as Cache

import numpy as np

from . import layers
from .backend import array_module
from .threads import cpu_threads, parallel_map, shards

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


def gelu_forward(x):
    """GELU as layers.gelu_forward computes it; big float32 NumPy arrays go block by block
    (blocked_gelu), keeping GELU'(x) for the backward instead of x."""
    if not applies(x):
        return layers.gelu_forward(x)
    y, dgelu = blocked_gelu(x)
    return y, Cache(dgelu=dgelu)


def gelu_backward(dy, cache):
    if not hasattr(cache, "dgelu"):
        return layers.gelu_backward(dy, cache)
    return dy * cache.dgelu


GELUS = {"exact": (gelu_forward, gelu_backward), "tanh": layers.GELUS["tanh"]}


# --------------------------------------------------- the last block, class token only
#
# When the head reads the class token, no other row of the last block's output reaches
# the loss. Everything after attention works token by token (residual, LayerNorm, MLP),
# so only the class token's row needs computing there, and attention needs only the
# class token's query; every token still gives its key and value (docs/gradients.md §9).

def cls_block_forward(x, p, num_heads, gelu="exact", keep=None):
    """layers.block_forward's output row of the class token alone: x [B, N, D] ->
    y [B, 1, D] equal to block_forward(x, ...)[0][:, :1]."""
    k1, k2 = keep if keep is not None else (1.0, 1.0)
    D = x.shape[-1]
    h, c_n1 = layers.layernorm_forward(x, p["norm1.weight"], p["norm1.bias"])      # [B, N, D]
    qkv, c_in = layers.linear_forward(h, p["attn.in_proj_weight"], p["attn.in_proj_bias"])
    q, k, v = (layers.split_heads(qkv[..., i * D:(i + 1) * D], num_heads) for i in range(3))
    o, c_sdpa = layers.sdpa_forward(q[:, :, :1], k, v)                             # [B, h, 1, d]
    h, c_out = layers.linear_forward(layers.merge_heads(o), p["attn.out_proj.weight"],
                                     p["attn.out_proj.bias"])                      # [B, 1, D]
    x1 = x[:, :1] + k1 * h                                                         # [B, 1, D]
    h, c_n2 = layers.layernorm_forward(x1, p["norm2.weight"], p["norm2.bias"])
    h, c_mlp = layers.mlp_forward(h, p["mlp.0.weight"], p["mlp.0.bias"],
                                  p["mlp.2.weight"], p["mlp.2.bias"], gelu)
    return x1 + k2 * h, Cache(norm1=c_n1, linear_in=c_in, sdpa=c_sdpa, linear_out=c_out,
                              norm2=c_n2, mlp=c_mlp, k1=k1, k2=k2, num_heads=num_heads)


def cls_block_backward(dy, cache):
    """block_backward with dy [B, 1, D] on the class token's row: the rows of dq of the
    tokens that did not ask are zero, and the residual gradient reaches the class token's
    row of dx only; the other tokens get theirs through their keys and values."""
    c = cache
    xp = array_module(dy)
    dh, dw1, db1, dw2, db2 = layers.mlp_backward(c.k2 * dy, c.mlp)
    dh, dn2w, dn2b = layers.layernorm_backward(dh, c.norm2)
    dx1 = dy + dh                                                                  # [B, 1, D]
    do, dout_w, dout_b = layers.linear_backward(c.k1 * dx1, c.linear_out)
    dq, dk, dv = layers.sdpa_backward(layers.split_heads(do, c.num_heads), c.sdpa)
    dq_all = xp.zeros_like(dk)                                                     # [B, h, N, d]
    dq_all[:, :, :1] = dq
    dqkv = xp.concatenate([layers.merge_heads(g) for g in (dq_all, dk, dv)], axis=-1)
    dh, din_w, din_b = layers.linear_backward(dqkv, c.linear_in)
    dx, dn1w, dn1b = layers.layernorm_backward(dh, c.norm1)                        # [B, N, D]
    dx[:, :1] += dx1
    grads = (dn1w, dn1b, din_w, din_b, dout_w, dout_b, dn2w, dn2b, dw1, db1, dw2, db2)
    return dx, dict(zip(layers.BLOCK_PARAM_NAMES, grads))


# -------------------------------------------------------------- the model, run fast

class FastViT:
    """Runs a ViT's forward and backward through the fast paths above; the numbers are
    the model's own (tests compare the two), the parameters and gradients are the model's.

        net = FastViT(model)             # threads: MINIVIT_THREADS, else every CPU
        logits = net.forward(images, rng=rng)
        net.backward(dlogits)            # adds into model.grads(), like model.backward

    On NumPy each batch is cut into `threads` shards run at once (threads.parallel_map);
    shard k > 0 adds its gradients into a buffer of its own, summed in a fixed order
    afterwards, so a run is bitwise repeatable. On CuPy there is one shard."""

    def __init__(self, model, threads=None):
        self.model = model
        self.threads = threads
        self._cache = None
        self._shard_grads = []          # (flat buffer, {name: view}) of shards 1, 2, ...

    @property
    def threads(self):
        return self._threads

    @threads.setter
    def threads(self, value):
        if value is None:
            value = cpu_threads() if self.model.xp is np else 1
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"threads must be a positive integer or None, got {value!r}")
        self._threads = int(value) if self.model.xp is np else 1

    def forward(self, x, keep_cache=True, rng=None):
        """model.forward, fast: logits [B, K]; keeps what backward needs unless told not."""
        m = self.model
        x = m.check_images(x)
        masks = m.drop_path_masks(len(x), rng)
        parts = shards(len(x), self.threads)

        def run(s):
            part_masks = [None if k is None else (k[0][s], k[1][s]) for k in masks]
            return self._forward_pass(x[s], part_masks, keep_cache)

        results = parallel_map(run, parts)
        logits = results[0][0] if len(parts) == 1 else m.xp.concatenate([r[0] for r in results])
        self._cache = (parts, [r[1] for r in results]) if keep_cache else None
        return logits

    __call__ = forward

    def backward(self, dlogits):
        """model.backward, fast: adds the gradients into model.grads(), returns dL/dx."""
        if self._cache is None:
            raise RuntimeError("backward() called without a forward() since the last backward: "
                               "run logits = net.forward(x) first")
        (parts, caches), self._cache = self._cache, None
        m = self.model
        dlogits = m.check_dlogits(dlogits, parts[-1].stop)
        buffers = [m.grads()] + [self._shard_grad_views(k) for k in range(1, len(parts))]

        def run(k):
            if k > 0:
                self._shard_grads[k - 1][0].fill(0)
            return self._backward_pass(dlogits[parts[k]], caches[k], buffers[k])

        dxs = parallel_map(run, range(len(parts)))
        for k in range(1, len(parts)):
            m.flat_grads += self._shard_grads[k - 1][0]
        return dxs[0] if len(dxs) == 1 else m.xp.concatenate(dxs)

    def _shard_grad_views(self, k):
        while len(self._shard_grads) < k:
            flat = self.model.xp.zeros_like(self.model.flat_grads)
            self._shard_grads.append((flat, self.model.views(flat)))
        return self._shard_grads[k - 1][1]

    def _blocks(self):
        """(forward, backward) of each block: the last one on the class token alone when
        the head reads it."""
        c = self.model.config
        full = (layers.block_forward, layers.block_backward)
        last = (cls_block_forward, cls_block_backward) if c.pool == "cls" else full
        return [full] * (c.depth - 1) + [last]

    def _forward_pass(self, x, masks, keep_cache):
        m, c = self.model, self.model.config
        gelu = GELUS[c.gelu]
        h, c_embed = m.embed_forward(x)
        c_blocks = []
        for i, (block, _) in enumerate(self._blocks()):
            h, cb = block(h, m.block_params(i), c.num_heads, gelu, masks[i])
            c_blocks.append(cb if keep_cache else None)
        logits, c_head = m.head_forward(h)
        return logits, (Cache(embed=c_embed, blocks=c_blocks, head=c_head) if keep_cache else None)

    def _backward_pass(self, dlogits, cache, grads):
        m = self.model
        dh = m.head_backward(dlogits, cache.head, grads)
        for i, (_, block_backward) in reversed(list(enumerate(self._blocks()))):
            dh, block_grads = block_backward(dh, cache.blocks[i])
            cache.blocks[i] = None         # free this block's activations
            for name, g in block_grads.items():
                grads[f"blocks.{i}.{name}"] += g
        return m.embed_backward(dh, cache.embed, grads)
