"""The fast path: the ViT's forward and backward with fewer operations, checked against
the reference (layers.py, model.py) by tests/test_fast.py, as llm.c checks its kernels.

The math is the reference's; what changes is how it is scheduled:

- elementwise chains run as one kernel each (kernels.py: cupy.fuse on the GPU, the
  blocked GELU on the CPU), and biases are added inside the next kernel;
- parameter gradients are written straight into a buffer laid out like the model's flat
  gradient (matmul and sum with `out=`), which is added to the model's gradients with one
  operation at the end;
- the last block computes only the class token's row when the head reads it (exact:
  docs/gradients.md §9), and the input gradient is skipped when nobody asks for it;
- on NumPy each batch is cut into one shard per CPU core, run at once in threads
  (threads.py).

One training step of the default ViT at batch 80 is about 400 device operations and no
host sync on CuPy (benchmarks/launch_count.py counts them), against about 760 for the
reference path.

    net = FastViT(model)                  # the model's parameters, run fast
    logits = net.forward(images, rng=rng)
    net.backward(dlogits)                 # adds into model.grads(), like model.backward
"""

import math
from types import SimpleNamespace as Cache

import numpy as np

from . import kernels, layers
from .backend import array_module
from .threads import cpu_threads, parallel_map, shards


# ----------------------------------------------------------------------- fast layers
# Each backward writes its parameter gradients into the arrays it is given (grads[name]
# with `out=`), instead of returning them.

def linear(x, w):
    """x [..., Din] @ w^T -> [..., Dout], the bias left to the next kernel."""
    x2 = x.reshape(-1, x.shape[-1])
    return (x2 @ w.T).reshape(*x.shape[:-1], w.shape[0]), Cache(x2=x2, w=w, x_shape=x.shape)


def linear_backward(dy, c, gw, gb, need_dx=True):
    """layers.linear_backward, writing dW into gw and db into gb; -> dx (or None)."""
    dy2 = dy.reshape(-1, c.w.shape[0])
    array_module(dy2).matmul(dy2.T, c.x2, out=gw)               # dW = dy^T x
    dy2.sum(axis=0, out=gb)                                     # db = sum dy
    return (dy2 @ c.w).reshape(c.x_shape) if need_dx else None  # dx = dy W


def layernorm(x, w, b, eps=1e-5):
    mu = x.mean(axis=-1, keepdims=True)                                      # [..., 1]
    var = kernels.squared_deviation(x, mu).mean(axis=-1, keepdims=True)      # [..., 1]
    rstd = kernels.reciprocal_std(var, eps)                                  # [..., 1]
    y, xhat = kernels.layernorm_apply(x, mu, rstd, w, b)                     # [..., D]
    return y, Cache(xhat=xhat, rstd=rstd, w=w)


def layernorm_backward(dy, c, gw, gb, dres=0.0):
    """layers.layernorm_backward; dres (a residual gradient) is added to dx."""
    D = c.w.shape[0]
    g, gx, dyx = kernels.layernorm_backward_parts(dy, c.w, c.xhat)
    dyx.reshape(-1, D).sum(axis=0, out=gw)
    dy.reshape(-1, D).sum(axis=0, out=gb)
    return kernels.layernorm_backward_dx(g, c.xhat, g.mean(axis=-1, keepdims=True),
                                         gx.mean(axis=-1, keepdims=True), c.rstd, dres)


def sdpa(q, k, v):
    """layers.sdpa_forward: softmax(q k^T / sqrt d) v; q may have fewer rows than k."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = q @ k.transpose(0, 1, 3, 2)                                          # [B, h, Nq, N]
    a = kernels.scaled_exp(s, s.max(axis=-1, keepdims=True), scale)
    a /= a.sum(axis=-1, keepdims=True)                                       # softmax
    return a @ v, Cache(q=q, k=k, v=v, a=a, scale=scale)


def sdpa_backward(do, c):
    da = do @ c.v.transpose(0, 1, 3, 2)                                      # [B, h, Nq, N]
    dv = c.a.transpose(0, 1, 3, 2) @ do                                      # [B, h, N, d]
    ds = kernels.softmax_backward_ds(da, c.a, (da * c.a).sum(axis=-1, keepdims=True), c.scale)
    return ds @ c.k, ds.transpose(0, 1, 3, 2) @ c.q, dv


def attention(x, p, num_heads, queries=None):
    """layers.attention_forward without the output bias (the residual kernel adds it).
    queries: only the first `queries` tokens ask (the class-token block)."""
    D = x.shape[-1]
    qkv, c_in = linear(x, p["attn.in_proj_weight"])
    qkv += p["attn.in_proj_bias"]                                            # [B, N, 3D]
    q, k, v = (layers.split_heads(qkv[..., i * D:(i + 1) * D], num_heads) for i in range(3))
    if queries is not None:
        q = q[:, :, :queries]
    o, c_sdpa = sdpa(q, k, v)                                                # [B, h, Nq, d]
    y, c_out = linear(layers.merge_heads(o), p["attn.out_proj.weight"])      # [B, Nq, D]
    return y, Cache(linear_in=c_in, sdpa=c_sdpa, linear_out=c_out, num_heads=num_heads)


def attention_backward(dy, c, g, xp):
    do = linear_backward(dy, c.linear_out, g["attn.out_proj.weight"], g["attn.out_proj.bias"])
    dq, dk, dv = sdpa_backward(layers.split_heads(do, c.num_heads), c.sdpa)
    B, H, N, d = dk.shape
    dqkv = xp.empty((B, N, 3, H, d), dtype=dk.dtype)                         # [B, N, 3, h, d]
    if dq.shape[2] < N:                                                      # tokens that did not ask
        dqkv[:, dq.shape[2]:, 0] = 0
    for i, grad in enumerate((dq, dk, dv)):
        dqkv[:, :grad.shape[2], i] = grad.transpose(0, 2, 1, 3)
    return linear_backward(dqkv.reshape(B, N, 3 * H * d), c.linear_in,
                           g["attn.in_proj_weight"], g["attn.in_proj_bias"])


GELUS = {"exact": kernels.gelu_bias, "tanh": kernels.gelu_tanh_bias}


def block(x, p, num_heads, gelu="exact", keep=None, cls_only=False):
    """layers.block_forward (cls_only: only the class token's output row, [B, 1, D])."""
    k1, k2 = keep if keep is not None else (1.0, 1.0)
    h, c_n1 = layernorm(x, p["norm1.weight"], p["norm1.bias"])
    h, c_attn = attention(h, p, num_heads, queries=1 if cls_only else None)
    x1 = kernels.residual(x[:, :1] if cls_only else x, h, p["attn.out_proj.bias"], k1)
    h, c_n2 = layernorm(x1, p["norm2.weight"], p["norm2.bias"])
    h, c_fc1 = linear(h, p["mlp.0.weight"])
    h, dgelu = GELUS[gelu](h, p["mlp.0.bias"])
    h, c_fc2 = linear(h, p["mlp.2.weight"])
    y = kernels.residual(x1, h, p["mlp.2.bias"], k2)
    return y, Cache(norm1=c_n1, attn=c_attn, norm2=c_n2, fc1=c_fc1, dgelu=dgelu, fc2=c_fc2,
                    keep=keep, cls_only=cls_only)


def block_backward(dy, c, g, xp):
    """layers.block_backward, writing the block's gradients into g (arrays keyed like
    layers.BLOCK_PARAM_NAMES). With cls_only, dy is [B, 1, D]: the residual gradient
    reaches the class token's row only."""
    k1, k2 = c.keep if c.keep is not None else (None, None)
    dh = linear_backward(dy if k2 is None else kernels.scale(dy, k2), c.fc2,
                         g["mlp.2.weight"], g["mlp.2.bias"])
    dh = linear_backward(dh * c.dgelu, c.fc1, g["mlp.0.weight"], g["mlp.0.bias"])
    dx1 = layernorm_backward(dh, c.norm2, g["norm2.weight"], g["norm2.bias"], dres=dy)
    dh = attention_backward(dx1 if k1 is None else kernels.scale(dx1, k1), c.attn, g, xp)
    if not c.cls_only:
        return layernorm_backward(dh, c.norm1, g["norm1.weight"], g["norm1.bias"], dres=dx1)
    dx = layernorm_backward(dh, c.norm1, g["norm1.weight"], g["norm1.bias"])
    dx[:, :1] += dx1
    return dx


# -------------------------------------------------------------- the model, run fast

class FastViT:
    """Runs a ViT's forward and backward through the fast path; the numbers are the
    model's own (tests compare the two), the parameters and gradients are the model's.

        net = FastViT(model)             # threads: MINIVIT_THREADS, else every CPU
        logits = net.forward(images, rng=rng)
        net.backward(dlogits)            # adds into model.grads(), like model.backward

    On NumPy each batch is cut into `threads` shards run at once (threads.parallel_map).
    Each shard writes its gradients into a buffer of its own; the buffers are added to the
    model's gradients in a fixed order, so a run is bitwise repeatable. On CuPy there is
    one shard."""

    def __init__(self, model, threads=None):
        self.model = model
        self.threads = threads
        self._cache = None
        self._buffers = []              # (flat gradient buffer, {name: view}) per shard

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

    def forward(self, x, keep_cache=True, rng=None, rows=None):
        """model.forward, fast: logits [B, K]; keeps what backward needs unless told not.
        rows: run only these rows of the batch (a slice; data-parallel ranks), with the
        stochastic depth masks the whole batch would draw."""
        m = self.model
        x = m.check_images(x)
        masks = m.drop_path_masks(len(x), rng)
        if rows is not None:
            x = x[rows]
            masks = [None if k is None else (k[0][rows], k[1][rows]) for k in masks]
        parts = shards(len(x), self.threads)

        def run(s):
            part_masks = [None if k is None else (k[0][s], k[1][s]) for k in masks]
            return self._forward_pass(x[s], part_masks, keep_cache)

        results = parallel_map(run, parts)
        logits = results[0][0] if len(parts) == 1 else m.xp.concatenate([r[0] for r in results])
        self._cache = (parts, [r[1] for r in results]) if keep_cache else None
        return logits

    __call__ = forward

    def backward(self, dlogits, need_dx=True):
        """model.backward, fast: adds the gradients into model.grads() and returns dL/dx
        (None with need_dx=False, which saves the patch embedding's input gradient)."""
        if self._cache is None:
            raise RuntimeError("backward() called without a forward() since the last backward: "
                               "run logits = net.forward(x) first")
        (parts, caches), self._cache = self._cache, None
        m = self.model
        dlogits = m.check_dlogits(dlogits, parts[-1].stop)
        while len(self._buffers) < len(parts):
            flat = m.xp.empty_like(m.flat_grads)
            self._buffers.append((flat, m.views(flat)))

        def run(k):
            return self._backward_pass(dlogits[parts[k]], caches[k], self._buffers[k][1], need_dx)

        dxs = parallel_map(run, range(len(parts)))
        for k in range(len(parts)):       # every entry of each buffer was written
            m.flat_grads += self._buffers[k][0]
        if not need_dx:
            return None
        return dxs[0] if len(dxs) == 1 else m.xp.concatenate(dxs)

    def _cls_only(self, i):
        c = self.model.config
        return i == c.depth - 1 and c.pool == "cls"

    def _forward_pass(self, x, masks, keep_cache):
        m, c = self.model, self.model.config
        p = m.params
        D, C, ps = c.embed_dim, c.patch_in_chans, c.patch_size
        c_stem = []
        for name, _, _, stride in c.stem_convs:                              # [B, S, H/s, W/s]
            h, c_conv = layers.conv2d_forward(x, p[f"{name}.weight"], p[f"{name}.bias"],
                                              stride=stride, padding=1)
            x, dgelu = GELUS[c.gelu](h, 0.0)
            c_stem.append(Cache(name=name, conv=c_conv, dgelu=dgelu))
        patches = layers.patchify(x, ps)                                     # [B, P, C*p*p]
        h, c_patch = linear(patches, p["patch_embed.proj.weight"].reshape(D, C * ps * ps))
        pos, c_pos = m.pos_embed_for(x.shape[-1] // ps)                       # [1, N, D]
        tokens = m.xp.empty((len(x), pos.shape[1], D), dtype=h.dtype)        # [B, N, D]
        tokens[:, :1] = p["vit_embed.cls_token"] + pos[:, :1]
        tokens[:, 1:] = kernels.residual(h, p["patch_embed.proj.bias"], pos[:, 1:], 1.0)
        h = tokens
        c_blocks = []
        for i in range(c.depth):
            h, cb = block(h, m.block_params(i), c.num_heads, c.gelu, masks[i], self._cls_only(i))
            c_blocks.append(cb if keep_cache else None)
        pooled = h[:, 0] if c.pool == "cls" else h[:, 1:].mean(axis=1)         # [B, D]
        z, c_norm = layernorm(pooled, p["norm.weight"], p["norm.bias"])
        logits, c_head = linear(z, p["head.weight"])
        logits += p["head.bias"]                                             # [B, K]
        if not keep_cache:
            return logits, None
        return logits, Cache(stem=c_stem, patch=c_patch, pos=c_pos, x_shape=x.shape, blocks=c_blocks,
                             norm=c_norm, head=c_head, h_shape=h.shape)

    def _backward_pass(self, dlogits, cache, g, need_dx):
        m, c = self.model, self.model.config
        xp = m.xp
        dz = linear_backward(dlogits, cache.head, g["head.weight"], g["head.bias"])
        dpooled = layernorm_backward(dz, cache.norm, g["norm.weight"], g["norm.bias"])  # [B, D]
        if c.pool == "cls" and cache.h_shape[1] == 1:
            dh = dpooled[:, None, :]                                         # [B, 1, D]
        else:
            dh = xp.zeros(cache.h_shape, dtype=dpooled.dtype)                # [B, N, D]
            if c.pool == "cls":
                dh[:, 0] = dpooled
            else:
                dh[:, 1:] = (dpooled / (cache.h_shape[1] - 1))[:, None, :]
        for i in reversed(range(c.depth)):
            prefix = f"blocks.{i}."
            block_grads = {name: g[prefix + name] for name in layers.BLOCK_PARAM_NAMES}
            dh = block_backward(dh, cache.blocks[i], block_grads, xp)
            cache.blocks[i] = None             # free this block's activations
        if cache.pos is None:
            dh.sum(axis=0, keepdims=True, out=g["vit_embed.pos_embed"])
        else:                                    # smaller images: back through the resize
            g["vit_embed.pos_embed"][...] = layers.pos_embed_resize_backward(
                dh.sum(axis=0, keepdims=True), cache.pos)
        dh[:, :1].sum(axis=0, keepdims=True, out=g["vit_embed.cls_token"])
        D = c.embed_dim
        dpatch = linear_backward(dh[:, 1:], cache.patch, g["patch_embed.proj.weight"].reshape(D, -1),
                                 g["patch_embed.proj.bias"], need_dx or bool(cache.stem))
        if not (need_dx or cache.stem):
            return None
        dx = layers.unpatchify(dpatch, cache.x_shape, c.patch_size)
        for stem in reversed(cache.stem):
            dx, g[f"{stem.name}.weight"][...], g[f"{stem.name}.bias"][...] = \
                layers.conv2d_backward(dx * stem.dgelu, stem.conv)
        return dx if need_dx else None
