"""The fast path: the ViT's forward and backward with fewer operations, checked against
the engine (engine/layers.py, transformer.py, model.py) by the tests and before every fast
training run (check.py), as llm.c checks its kernels. It shares the engine's parameter
layout (model.params, model.flat_grads) and its pure layer functions where nothing is to
be gained (patchify, the stem's convs, the pooling), and walks the model on its own.

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

benchmarks/launch_count.py counts a step's GPU launches (benchmarks/RESULTS.md).

    net = FastRunner(model)               # the model's parameters, run fast
    logits = net.forward(images, draws=draws)
    net.backward(dlogits)                 # adds into model.grads(), like model.backward
"""

import math
from types import SimpleNamespace as Cache

import numpy as np

from ..engine import layers, resize, transformer
from ..engine.backend import array_module
from ..engine.draws import StepDraws
from . import kernels
from .threads import cpu_threads, parallel_map, shards


# ----------------------------------------------------------------------- fast layers
# The reference's math under names of their own, since the contracts differ: a forward
# may leave its bias to the next kernel (linear_nobias, attention_nobias), and each
# *_backward_into writes its parameter gradients into the arrays it is given (grads[name]
# with `out=`) instead of returning them. The caches use the reference's field names for
# what both keep (linear_in, sdpa, norm1, mlp.linear1, k1, ...); where the reference keeps
# GELU's cache, the fast path keeps its derivative, dgelu.

def linear_nobias(x, w):
    """x [..., Din] @ w^T -> [..., Dout], the bias left to the next kernel."""
    x2 = x.reshape(-1, x.shape[-1])
    return (x2 @ w.T).reshape(*x.shape[:-1], w.shape[0]), Cache(x2=x2, w=w, x_shape=x.shape)


def linear_backward_into(dy, c, gw, gb, need_dx=True):
    """layers.linear_backward, writing dW into gw and db into gb; -> dx (or None)."""
    dy2 = dy.reshape(-1, c.w.shape[0])
    array_module(dy2).matmul(dy2.T, c.x2, out=gw)               # dW = dy^T x
    dy2.sum(axis=0, out=gb)                                     # db = sum dy
    return (dy2 @ c.w).reshape(c.x_shape) if need_dx else None  # dx = dy W


def layernorm_fused(x, w, b, eps=1e-5):
    """layers.layernorm_forward in four kernels (two row sums, two elementwise). Its cache
    keeps the variance's row sum, var_sum, where the reference keeps rstd: the kernels
    that need 1/sqrt(var + eps) compute it."""
    inv_d = 1.0 / x.shape[-1]
    x_sum = x.sum(axis=-1, keepdims=True)                                    # [..., 1]
    var_sum = kernels.squared_deviation(x, x_sum, inv_d).sum(axis=-1, keepdims=True)  # [..., 1]
    y, xhat = kernels.layernorm_apply(x, x_sum, var_sum, w, b, inv_d, eps)   # [..., D]
    return y, Cache(xhat=xhat, var_sum=var_sum, w=w, eps=eps)


def layernorm_backward_into(dy, c, gw, gb, dres=0.0):
    """layers.layernorm_backward, writing dw into gw and db into gb; -> dx, plus dres (a
    residual gradient)."""
    D = c.w.shape[0]
    g, gx, dyx = kernels.layernorm_backward_parts(dy, c.w, c.xhat)
    dyx.reshape(-1, D).sum(axis=0, out=gw)
    dy.reshape(-1, D).sum(axis=0, out=gb)
    return kernels.layernorm_backward_dx(g, c.xhat, g.sum(axis=-1, keepdims=True),
                                         gx.sum(axis=-1, keepdims=True), c.var_sum, 1.0 / D,
                                         c.eps, dres)


def norm_fused(x, p, name, kind="layernorm"):
    """layers.norm_forward: LayerNorm fused; any other norm (RMSNorm) is the engine's own
    code, which needs no check against the engine."""
    if kind != "layernorm":
        return layers.norm_forward(x, p, name, kind)
    y, cache = layernorm_fused(x, p[name + ".weight"], p[name + ".bias"])
    return y, Cache(kind=kind, name=name, norm=cache)


def norm_backward_into(dy, c, g, dres=0.0):
    """The backward of norm_fused, writing its parameter gradients into g[name.weight]
    (and g[name.bias]); -> dx, plus dres (a residual gradient)."""
    if c.kind != "layernorm":
        dx, grads = layers.norm_backward(dy, c)
        for name, grad in grads.items():
            g[name][...] = grad
        return dx + dres
    return layernorm_backward_into(dy, c.norm, g[c.name + ".weight"], g[c.name + ".bias"], dres)


def sdpa_fused(q, k, v):
    """transformer.sdpa_forward: softmax(q k^T / sqrt d) v; q may have fewer rows than k."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = q @ k.transpose(0, 1, 3, 2)                                          # [B, h, Nq, N]
    a = kernels.scaled_exp(s, s.max(axis=-1, keepdims=True), scale)
    a /= a.sum(axis=-1, keepdims=True)                                       # softmax
    return a @ v, Cache(q=q, k=k, v=v, a=a, scale=scale)


def sdpa_fused_backward(do, c, dheads):
    """transformer.sdpa_backward, the softmax's backward in one kernel, writing dq, dk, dv into
    dheads[0], [1], [2] ([B, h, N, d] each; dq into its first Nq rows, the rest zero).
    do [B, h, Nq, d] contiguous."""
    xp = array_module(do)
    Nq = do.shape[2]
    da = do @ c.v.transpose(0, 1, 3, 2)                                      # [B, h, Nq, N]
    xp.matmul(c.a.transpose(0, 1, 3, 2), do, out=dheads[2])                  # dv = a^T do
    ds = kernels.softmax_backward_ds(da, c.a, (da * c.a).sum(axis=-1, keepdims=True), c.scale)
    if Nq < dheads.shape[3]:                                                 # tokens that did not ask
        dheads[0, :, :, Nq:] = 0
    xp.matmul(ds, c.k, out=dheads[0, :, :, :Nq])                             # dq = ds k
    xp.matmul(ds.transpose(0, 1, 3, 2), c.q, out=dheads[1])                  # dk = ds^T q


def attention_nobias(x, p, num_heads, queries=None):
    """transformer.attention_forward without the output bias (the residual kernel adds it).
    queries: only the first `queries` tokens ask (the class-token block).

    The projection's output is laid out once as heads [3, B, h, N, d] (q, k, v, each
    contiguous), its bias added in the same kernel: a batched matmul on CuPy first copies
    every operand that is not C-contiguous, and split_heads' views are not."""
    xp = array_module(x)
    B, N, D = x.shape
    h, d = num_heads, D // num_heads
    qkv, c_in = linear_nobias(x, p["attn.in_proj_weight"])                   # [B, N, 3D]
    heads = xp.empty((3, B, h, N, d), dtype=qkv.dtype)                       # [3, B, h, N, d]
    xp.add(qkv.reshape(B, N, 3, h, d).transpose(2, 0, 3, 1, 4),
           p["attn.in_proj_bias"].reshape(3, 1, h, 1, d), out=heads)
    q, k, v = heads[0], heads[1], heads[2]                                   # [B, h, N, d]
    if queries is not None:
        q = q[:, :, :queries]
    o, c_sdpa = sdpa_fused(q, k, v)                                          # [B, h, Nq, d]
    y, c_out = linear_nobias(transformer.merge_heads(o), p["attn.out_proj.weight"])  # [B, Nq, D]
    return y, Cache(linear_in=c_in, sdpa=c_sdpa, linear_out=c_out, num_heads=num_heads)


def attention_backward_into(dy, c, g, xp):
    """transformer.attention_backward, writing the four gradients into g (keyed like
    transformer.block_param_shapes); -> dx [B, N, D]."""
    do = linear_backward_into(dy, c.linear_out, g["attn.out_proj.weight"], g["attn.out_proj.bias"])
    do = xp.ascontiguousarray(transformer.split_heads(do, c.num_heads))          # [B, h, Nq, d]
    B, h, N, d = c.sdpa.k.shape
    dheads = xp.empty((3, B, h, N, d), dtype=do.dtype)                       # dq, dk, dv
    sdpa_fused_backward(do, c.sdpa, dheads)
    dqkv = dheads.transpose(1, 3, 0, 2, 4).reshape(B, N, 3 * h * d)          # [B, N, 3D]: one copy
    return linear_backward_into(dqkv, c.linear_in, g["attn.in_proj_weight"], g["attn.in_proj_bias"])


# a model's `gelu` setting -> its kernel: (h, b) -> (GELU(h + b), GELU'(h + b))
GELU_BIAS_KERNELS = {"exact": kernels.gelu_bias, "tanh": kernels.gelu_tanh_bias}


def block_fused(x, p, num_heads, gelu="exact", keep=None, cls_only=False, norm="layernorm"):
    """transformer.block_forward (cls_only: only the class token's output row, [B, 1, D])."""
    k1, k2 = keep if keep is not None else (None, None)
    h, c_n1 = norm_fused(x, p, "norm1", norm)
    h, c_attn = attention_nobias(h, p, num_heads, queries=1 if cls_only else None)
    x1 = kernels.residual(x[:, :1] if cls_only else x, h, p["attn.out_proj.bias"],
                          1.0 if k1 is None else k1)
    h, c_n2 = norm_fused(x1, p, "norm2", norm)
    h, c_fc1 = linear_nobias(h, p["mlp.0.weight"])
    h, dgelu = GELU_BIAS_KERNELS[gelu](h, p["mlp.0.bias"])
    h, c_fc2 = linear_nobias(h, p["mlp.2.weight"])
    y = kernels.residual(x1, h, p["mlp.2.bias"], 1.0 if k2 is None else k2)
    return y, Cache(norm1=c_n1, attn=c_attn, norm2=c_n2, mlp=Cache(linear1=c_fc1, dgelu=dgelu, linear2=c_fc2),
                    k1=k1, k2=k2, cls_only=cls_only)


def block_backward_into(dy, c, g, xp):
    """transformer.block_backward, writing the block's gradients into g (arrays keyed like
    transformer.block_param_shapes); -> dx. With cls_only, dy is [B, 1, D]: the residual
    gradient reaches the class token's row only. k1, k2: None without stochastic depth."""
    dh = linear_backward_into(dy if c.k2 is None else kernels.scale(dy, c.k2), c.mlp.linear2,
                              g["mlp.2.weight"], g["mlp.2.bias"])
    dh = linear_backward_into(dh * c.mlp.dgelu, c.mlp.linear1, g["mlp.0.weight"], g["mlp.0.bias"])
    dx1 = norm_backward_into(dh, c.norm2, g, dres=dy)
    dh = attention_backward_into(dx1 if c.k1 is None else kernels.scale(dx1, c.k1), c.attn, g, xp)
    if not c.cls_only:
        return norm_backward_into(dh, c.norm1, g, dres=dx1)
    dx = norm_backward_into(dh, c.norm1, g)
    dx[:, :1] += dx1
    return dx


# -------------------------------------------------------------- the model, run fast

class FastRunner:
    """Runs a ViT's forward and backward through the fast path; the numbers are the
    engine's own (tests compare the two), the parameters and gradients are the model's.

        net = FastRunner(model)          # threads: MINIVIT_THREADS, else every CPU
        logits = net.forward(images, draws=draws)
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

    def forward(self, x, keep_cache=True, draws=None):
        """model.forward, fast: logits [B, K]; keeps what backward needs unless told not.
        draws: the step's random draws (StepDraws), as the model takes them."""
        m = self.model
        x = m.check_images(x)
        draws = draws or StepDraws.none(m.config.depth)
        parts = shards(len(x), self.threads)
        results = parallel_map(lambda s: self._forward_pass(x[s], draws.rows(s), keep_cache), parts)
        logits = results[0][0] if len(parts) == 1 else m.xp.concatenate([r[0] for r in results])
        self._cache = (parts, [r[1] for r in results]) if keep_cache else None
        return logits

    __call__ = forward

    def backward(self, dlogits, need_dx=True):
        """model.backward, fast: adds the gradients into model.grads() and returns dL/dx
        (None with need_dx=False, which skips the patch embedding's input gradient, or with a
        conv stem its first conv's)."""
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

    def _forward_pass(self, x, draws, keep_cache):
        c, p = self.model.config, self.model.params
        D, C, ps = c.embed_dim, c.patch_in_chans, c.patch_size
        x, c_stem = self._stem_forward(x)                                    # [B, S, H/r, W/r]
        patches = layers.patchify(x, ps)                                     # [B, P, C*p*p]
        h, c_patch = linear_nobias(patches, p["patch_embed.proj.weight"].reshape(D, C * ps * ps))
        pos, c_pos = resize.pos_embed_for_grid(p["vit_embed.pos_embed"], x.shape[-1] // ps)  # [1, N, D]
        tokens = self.model.xp.empty((len(x), pos.shape[1], D), dtype=h.dtype)  # [B, N, D]
        tokens[:, :1] = p["vit_embed.cls_token"] + pos[:, :1]
        tokens[:, 1:] = kernels.residual(h, p["patch_embed.proj.bias"], pos[:, 1:], 1.0)
        h = tokens
        c_blocks = []
        for i in range(c.depth):
            h, cb = block_fused(h, transformer.block_params(p, i), c.num_heads, c.gelu,
                                draws.drop_path[i], self._cls_only(i), c.norm)
            c_blocks.append(cb if keep_cache else None)
        pooled, c_pool = transformer.pool_forward(h, c.pool, p.get(transformer.SEQ_POOL_WEIGHT))  # [B, D]
        z, c_norm = norm_fused(pooled, p, "norm", c.norm)
        logits, c_lin = linear_nobias(z, p["head.weight"])
        logits += p["head.bias"]                                             # [B, K]
        if not keep_cache:
            return logits, None
        return logits, Cache(embed=Cache(stem=c_stem, patch=c_patch, pos=c_pos, x_shape=x.shape),
                             blocks=c_blocks, head=Cache(pool=c_pool, norm=c_norm, linear=c_lin))

    def _stem_forward(self, x):
        """The stem's convs (engine layers), each GELU as a kernel that keeps GELU'(h)."""
        p, c = self.model.params, self.model.config
        caches = []
        for name, _, _, stride in c.stem_convs:
            x, c_conv = layers.conv2d_forward(x, p[f"{name}.weight"], p[f"{name}.bias"],
                                              stride=stride, padding=1)      # [B, S, H/s, W/s]
            x, dgelu = GELU_BIAS_KERNELS[c.gelu](x, 0.0)
            caches.append(Cache(name=name, conv=c_conv, dgelu=dgelu))
        return x, caches

    def _stem_backward(self, dx, caches, g, need_dx):
        """-> dL/dx (None with need_dx=False); writes the convs' gradients into g."""
        for i, c in reversed(list(enumerate(caches))):
            dx, g[f"{c.name}.weight"][...], g[f"{c.name}.bias"][...] = layers.conv2d_backward(
                dx * c.dgelu, c.conv, need_dx=need_dx or i > 0)
        return dx

    def _backward_pass(self, dlogits, cache, g, need_dx):
        c, xp = self.model.config, self.model.xp
        head, embed = cache.head, cache.embed
        dz = linear_backward_into(dlogits, head.linear, g["head.weight"], g["head.bias"])
        dpooled = norm_backward_into(dz, head.norm, g)                       # [B, D]
        if head.pool.h_shape[1] == 1:         # the class-token-only last block: nothing to pool
            dh = dpooled[:, None, :]                                         # [B, 1, D]
        else:
            dh, dpool_w = transformer.pool_backward(dpooled, head.pool)      # [B, N, D]
            if dpool_w is not None:                                          # pool "seq"
                g[transformer.SEQ_POOL_WEIGHT][...] = dpool_w
        for i in reversed(range(c.depth)):
            dh = block_backward_into(dh, cache.blocks[i], transformer.block_params(g, i), xp)
            cache.blocks[i] = None             # free this block's activations
        if embed.pos is None:
            dh.sum(axis=0, keepdims=True, out=g["vit_embed.pos_embed"])
        else:                                    # smaller images: back through the resize
            g["vit_embed.pos_embed"][...] = resize.pos_embed_resize_backward(
                dh.sum(axis=0, keepdims=True), embed.pos)
        dh[:, :1].sum(axis=0, keepdims=True, out=g["vit_embed.cls_token"])
        D = c.embed_dim
        dpatch = linear_backward_into(dh[:, 1:], embed.patch, g["patch_embed.proj.weight"].reshape(D, -1),
                                      g["patch_embed.proj.bias"], need_dx or bool(embed.stem))
        if not (need_dx or embed.stem):
            return None
        dx = layers.unpatchify(dpatch, embed.x_shape, c.patch_size)
        return self._stem_backward(dx, embed.stem, g, need_dx)
