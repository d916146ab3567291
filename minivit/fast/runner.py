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
  (threads.py);
- on CuPy, where a launch costs more than this model's arithmetic, attention and
  LayerNorm's backward take a schedule of their own in fewer launches (the GPU's
  schedule, below; the CPU keeps the functions that read like the reference).

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
from . import blas, kernels
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
    return blas.matmul(x2, w.T).reshape(*x.shape[:-1], w.shape[0]), Cache(x2=x2, w=w, x_shape=x.shape)


def linear_backward_into(dy, c, gw, gb, need_dx=True):
    """layers.linear_backward, writing dW into gw and db into gb (gb None: db was written
    already); -> dx (or None)."""
    dy2 = dy.reshape(-1, c.w.shape[0])
    blas.matmul(dy2.T, c.x2, out=gw)                                      # dW = dy^T x
    if gb is not None:
        kernels.column_sums(dy2, out=gb)                                  # db = sum dy
    return blas.matmul(dy2, c.w).reshape(c.x_shape) if need_dx else None  # dx = dy W


def layernorm_fused(x, w, b, eps=1e-5):
    """layers.layernorm_forward in four kernels (two row sums, two elementwise). Its cache
    keeps the variance's row sum, var_sum, where the reference keeps rstd: the kernels
    that need 1/sqrt(var + eps) compute it."""
    inv_d = 1.0 / x.shape[-1]
    x_sum = kernels.row_sums(x)                                              # [..., 1]
    var_sum = kernels.row_sums(kernels.squared_deviation(x, x_sum, inv_d))   # [..., 1]
    y, xhat = kernels.layernorm_apply(x, x_sum, var_sum, w, b, inv_d, eps)   # [..., D]
    return y, Cache(xhat=xhat, var_sum=var_sum, w=w, eps=eps)


def layernorm_backward_into(dy, c, gw, gb, dres=0.0):
    """layers.layernorm_backward, writing dw into gw and db into gb; -> dx, plus dres (a
    residual gradient)."""
    D = c.w.shape[0]
    g, gx, dyx = kernels.layernorm_backward_parts(dy, c.w, c.xhat)
    kernels.column_sums(dyx.reshape(-1, D), out=gw)
    kernels.column_sums(dy.reshape(-1, D), out=gb)
    return kernels.layernorm_backward_dx(g, c.xhat, kernels.row_sums(g), kernels.row_sums(gx),
                                         c.var_sum, 1.0 / D, c.eps, dres)


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


def sdpa_fused(q, k, v, out=None):
    """transformer.sdpa_forward: softmax(q k^T / sqrt d) v, into out when given (a view
    [B, h, Nq, d]: NumPy's matmul writes a view whose rows are contiguous without a copy);
    q may have fewer rows than k."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = blas.matmul(q, k.transpose(0, 1, 3, 2))                              # [B, h, Nq, N]
    a = kernels.scaled_exp(s, s.max(axis=-1, keepdims=True), scale)
    a /= kernels.row_sums(a)                                                 # softmax
    return blas.matmul(a, v, out=out), Cache(q=q, k=k, v=v, a=a, scale=scale)


def sdpa_fused_backward(do, c, dheads):
    """transformer.sdpa_backward, the softmax's backward in one kernel, writing dq, dk, dv into
    dheads[0], [1], [2] ([B, h, N, d] each, views; dq into its first Nq rows, the rest
    zero). do [B, h, Nq, d]."""
    Nq = do.shape[2]
    da = blas.matmul(do, c.v.transpose(0, 1, 3, 2))                          # [B, h, Nq, N]
    blas.matmul(c.a.transpose(0, 1, 3, 2), do, out=dheads[2])                # dv = a^T do
    ds = kernels.softmax_backward_ds(da, c.a, kernels.row_sums(da * c.a), c.scale)
    if Nq < dheads.shape[3]:                                                 # tokens that did not ask
        dheads[0, :, :, Nq:] = 0
    blas.matmul(ds, c.k, out=dheads[0, :, :, :Nq])                           # dq = ds k
    blas.matmul(ds.transpose(0, 1, 3, 2), c.q, out=dheads[1])                # dk = ds^T q


def attention_nobias(x, p, num_heads, queries=None):
    """transformer.attention_forward without the output bias (the residual kernel adds it).
    queries: only the first `queries` tokens ask (the class-token block).

    No head is copied into a layout of its own: NumPy's batched matmul takes q, k, v as
    views of the projection's output, and writes the heads' outputs o straight into
    merge_heads' layout, as long as each matrix's rows are contiguous (BLAS's leading
    dimension). CuPy would copy such views first: the GPU has its own schedule."""
    xp = array_module(x)
    if xp is not np:
        return attention_gpu(x, p, num_heads, queries)
    B, N, D = x.shape
    h, d = num_heads, D // num_heads
    Nq = N if queries is None else queries
    qkv, c_in = linear_nobias(x, p["attn.in_proj_weight"])                   # [B, N, 3D]
    qkv += p["attn.in_proj_bias"]
    heads = qkv.reshape(B, N, 3, h, d).transpose(2, 0, 3, 1, 4)              # [3, B, h, N, d] view
    q, k, v = heads[0, :, :, :Nq], heads[1], heads[2]                        # [B, h, N, d]
    o = xp.empty((B, Nq, h, d), dtype=qkv.dtype)                             # [B, Nq, h, d]
    _, c_sdpa = sdpa_fused(q, k, v, out=o.transpose(0, 2, 1, 3))             # o as [B, h, Nq, d]
    y, c_out = linear_nobias(o.reshape(B, Nq, D), p["attn.out_proj.weight"])  # [B, Nq, D]
    return y, Cache(linear_in=c_in, sdpa=c_sdpa, linear_out=c_out, num_heads=num_heads)


def attention_backward_into(dy, c, g, xp):
    """transformer.attention_backward, writing the four gradients into g (keyed like
    transformer.block_param_shapes); -> dx [B, N, D]."""
    if xp is not np:
        return attention_backward_gpu(dy, c, g, xp)
    do = linear_backward_into(dy, c.linear_out, g["attn.out_proj.weight"], g["attn.out_proj.bias"])
    B, h, N, d = c.sdpa.k.shape
    dqkv = xp.empty((B, N, 3, h, d), dtype=do.dtype)                         # the projection's layout
    sdpa_fused_backward(xp.ascontiguousarray(transformer.split_heads(do, h)), c.sdpa,
                        dqkv.transpose(2, 0, 3, 1, 4))                       # dq, dk, dv as [3, B, h, N, d]
    return linear_backward_into(dqkv.reshape(B, N, 3 * h * d), c.linear_in,
                                g["attn.in_proj_weight"], g["attn.in_proj_bias"])


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
    if xp is not np:
        return block_backward_gpu(dy, c, g, xp)
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


# ------------------------------------------------------------------ the GPU's schedule
# On CuPy every kernel, reduction and operand copy is a launch, each ~10 us of host time:
# more than this model's arithmetic. The GPU runs the same math in fewer launches (what
# follows: benchmarks/launch_count.py counts them); the CPU keeps the functions above.
# Each change is exact up to rounding:
# - attention keeps q and k^T, v^T (one kernel each, biases added) and e^T (written by the
#   exponentials' kernel from a transposed view) contiguous, so no batched product copies
#   an operand; softmax's normalization comes after the product with v, in the kernel
#   that lays the heads out for the output projection; the backward's row terms
#   sum_j da_ij a_ij are do_i . o_i (o = a v), and it computes ds^T and dq^T = k^T ds^T;
# - LayerNorm's backward writes what it sums as slots of one array (kernels.py): two
#   reductions instead of four, and its column sums take in the gradient of the bias just
#   before the norm's weight in the model's layout when that bias's output gradient is
#   the norm's dx (attn.out_proj.bias before norm2, the previous block's mlp.2.bias
#   before norm1, the last block's before the head's norm with the class token read).

def _slots(xp, k, ndim):
    """[k, 1, ..., 1] (ndim ones) holding 0, ..., k-1: the slot index of kernels.py's layouts."""
    return kernels.constant(xp, ("slots", k, ndim), lambda: np.arange(k).reshape((k,) + (1,) * ndim))


def _first_row(xp, n):
    """[n, 1] bool, True on row 0 (the class token's)."""
    return kernels.constant(xp, ("first row", n), lambda: (np.arange(n) == 0)[:, None])


def _qkv_slots(xp, n, nq):
    """kernels.qkv_gradient's slot [1, n, 3, 1, 1]: q, k, v for each token, none (3) for the
    q of tokens past the nq that asked."""
    def make():
        slot = np.tile(np.arange(3), (n, 1))
        slot[nq:, 0] = 3
        return slot[None, :, :, None, None]
    return kernels.constant(xp, ("qkv", n, nq), make)


def attention_gpu(x, p, num_heads, queries=None):
    """attention_nobias on the GPU (cache: sdpa with q, kv_t = [k^T, v^T], e_t = e^T and
    e_sum, the exponentials' row sums as [B, h, 1, Nq])."""
    xp = array_module(x)
    B, N, D = x.shape
    h, d = num_heads, D // num_heads
    Nq = N if queries is None else queries
    qkv, c_in = linear_nobias(x, p["attn.in_proj_weight"])                   # [B, N, 3D]
    t, bias = qkv.reshape(B, N, 3, h, d), p["attn.in_proj_bias"].reshape(3, h, d)
    q = xp.empty((B, h, Nq, d), dtype=qkv.dtype)
    xp.add(t[:, :Nq, 0].transpose(0, 2, 1, 3), bias[0][:, None, :], out=q)   # [B, h, Nq, d]
    kv_t = xp.empty((2, B, h, d, N), dtype=qkv.dtype)                        # k^T, v^T
    xp.add(t[:, :, 1:].transpose(2, 0, 3, 4, 1), bias[1:, None, :, :, None], out=kv_t)
    scale = 1.0 / math.sqrt(d)
    s = q @ kv_t[0]                                                          # [B, h, Nq, N]
    e_t = xp.empty((B, h, N, Nq), dtype=s.dtype)                             # e^T
    kernels.scaled_exp_into(e_t, s.swapaxes(-1, -2), s.max(axis=-1, keepdims=True).swapaxes(-1, -2),
                            scale)
    e_sum = e_t.sum(axis=-2, keepdims=True)                                  # [B, h, 1, Nq]
    o_t = kv_t[1] @ e_t                                                      # (e v)^T [B, h, d, Nq]
    o = xp.empty((B, Nq, h, d), dtype=s.dtype)                               # softmax's division
    xp.divide(o_t.transpose(0, 3, 1, 2), e_sum.transpose(0, 3, 1, 2), out=o)  # after the product
    y, c_out = linear_nobias(o.reshape(B, Nq, D), p["attn.out_proj.weight"])  # [B, Nq, D]
    return y, Cache(linear_in=c_in, sdpa=Cache(q=q, kv_t=kv_t, e_t=e_t, e_sum=e_sum, scale=scale),
                    linear_out=c_out, num_heads=num_heads)


def attention_backward_gpu(dy, c, g, xp, out_bias_done=False):
    """attention_backward_into for attention_gpu's cache (out_bias_done: the out
    projection's bias gradient was written already) -> dx [B, N, D]."""
    s = c.sdpa
    B, h, Nq, d = s.q.shape
    N = s.kv_t.shape[-1]
    do = linear_backward_into(dy, c.linear_out, g["attn.out_proj.weight"],
                              None if out_bias_done else g["attn.out_proj.bias"])   # [B, Nq, D]

    def heads(t):                                     # [B, Nq, D] -> a view [B, h, Nq, d]
        return t.reshape(B, Nq, h, d).transpose(0, 2, 1, 3)
    do_h, do_e = (xp.empty((B, h, Nq, d), dtype=do.dtype) for _ in range(2))
    do_o = kernels.attention_backward_do(do_h, do_e, heads(do), heads(c.linear_out.x2),
                                         s.e_sum.swapaxes(-1, -2))
    da_a_sum = do_o.sum(axis=-1, keepdims=True)       # sum_j da_ij a_ij = do_i . o_i [B, h, Nq, 1]
    da = do_h @ s.kv_t[1]                             # do v^T                  [B, h, Nq, N]
    dv = s.e_t @ do_e                                 # a^T do = e^T (do / sum e) [B, h, N, d]
    ds_t = xp.empty((B, h, N, Nq), dtype=do.dtype)
    kernels.softmax_backward_ds_into(ds_t, da.swapaxes(-1, -2), s.e_t, s.e_sum,
                                     da_a_sum.swapaxes(-1, -2), s.scale)     # ds^T
    dq_t = s.kv_t[0] @ ds_t                           # (ds k)^T = k^T ds^T      [B, h, d, Nq]
    dk = ds_t @ s.q                                   # ds^T q                   [B, h, N, d]
    dqkv = xp.empty((B, N, 3, h, d), dtype=do.dtype)
    kernels.qkv_gradient_into(dqkv, _qkv_slots(xp, N, Nq), dq_t.transpose(0, 3, 1, 2)[:, :, None],
                              dk.transpose(0, 2, 1, 3)[:, :, None], dv.transpose(0, 2, 1, 3)[:, :, None])
    return linear_backward_into(dqkv.reshape(B, N, 3 * h * d), c.linear_in,
                                g["attn.in_proj_weight"], g["attn.in_proj_bias"])


def norm_backward_gpu(dy, c, g, sums=None, dres=0.0, rows=None):
    """norm_backward_into on the GPU -> dx plus dres (on rows only, a [N, 1] bool, when
    given). LayerNorm in four launches: layernorm_backward_rows, one row sum, the dx kernel
    with the column sums' slots, one column sum, whose weight and bias gradients go to
    sums[-2:] (a [k, D] view where they lie side by side in g's buffer; None: into g
    through a temporary), and with k = 3 the column sum of dx to sums[0]. Another norm:
    the engine's code, as norm_backward_into."""
    if c.kind != "layernorm":
        if rows is None:
            return norm_backward_into(dy, c, g, dres)
        dx = norm_backward_into(dy, c, g)
        dx[:, :1] += dres
        return dx
    xp, n, D = array_module(dy), c.norm, dy.shape[-1]
    gg = kernels.layernorm_backward_rows(dy, n.w, n.xhat, _slots(xp, 2, dy.ndim))   # [2, ..., D]
    row_sums = gg.sum(axis=-1, keepdims=True)                                         # [2, ..., 1]
    terms = (gg[0], n.xhat, row_sums[0], row_sums[1], n.var_sum, 1.0 / D, n.eps)
    if rows is None:
        out = kernels.layernorm_backward_dx_slots(*terms, dres, dy, _slots(xp, 3, dy.ndim))
    else:
        out = kernels.layernorm_backward_dx_slots_rows(*terms, dres, rows, dy, _slots(xp, 3, dy.ndim))
    target = xp.empty((2, D), dtype=dy.dtype) if sums is None else sums
    out.reshape(3, -1, D)[3 - target.shape[0]:].sum(axis=1, out=target)             # [k, D]
    if sums is None:
        g[c.name + ".weight"][...] = target[0]
        g[c.name + ".bias"][...] = target[1]
    return out[0]


def column_sums(view, takes_bias):
    """norm_backward_gpu's sums from a view FastRunner._spans made (or None) -> (sums,
    whether they take the bias before the norm's weight): all three rows when they have
    them and takes_bias (that bias's output gradient is the norm's dx), else the norm's
    own two."""
    if view is None:
        return None, False
    takes = takes_bias and view.shape[0] == 3
    return (view if takes else view[-2:]), takes


def block_backward_gpu(dy, c, g, xp, spans=None, dy_summed=False):
    """block_backward_into on the GPU. spans: {"norm1": view, "norm2": view} of g's buffer
    (FastRunner._spans; None: the norms' gradients go through temporaries). Without
    stochastic depth there, norm2's dx is the out projection's output gradient, so a
    view of norm2 that starts at attn.out_proj.bias takes its gradient too; norm1's view
    is given as it is to be summed (column_sums): with 3 rows, it takes the block before's
    mlp.2.bias, whose output gradient is this block's dx. dy_summed: mlp.2.bias's
    gradient, the sum of dy, was written already (by the norm after this block)."""
    spans = spans or {}
    dh = linear_backward_into(dy if c.k2 is None else kernels.scale(dy, c.k2), c.mlp.linear2,
                              g["mlp.2.weight"], None if dy_summed else g["mlp.2.bias"])
    dh = linear_backward_into(dh * c.mlp.dgelu, c.mlp.linear1, g["mlp.0.weight"], g["mlp.0.bias"])
    sums, out_bias_done = column_sums(spans.get("norm2"), c.k1 is None)
    dx1 = norm_backward_gpu(dh, c.norm2, g, sums, dres=dy)
    dh = attention_backward_gpu(dx1 if c.k1 is None else kernels.scale(dx1, c.k1), c.attn, g, xp,
                                out_bias_done)
    return norm_backward_gpu(dh, c.norm1, g, spans.get("norm1"), dres=dx1,
                             rows=_first_row(xp, dh.shape[1]) if c.cls_only else None)


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
        self._buffers = []              # (flat gradient buffer, {name: view}, spans) per shard

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
            self._buffers.append((flat, m.views(flat), self._spans(flat)))

        def run(k):
            return self._backward_pass(dlogits[parts[k]], caches[k], self._buffers[k][1], need_dx,
                                       self._buffers[k][2])

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

    def _spans(self, flat):
        """On the GPU, for norm_backward_gpu's column sums: views [k, D] of a gradient buffer
        laid out like flat_grads where a LayerNorm's weight and bias lie side by side (k = 2)
        and, k = 3, the bias before them too (attn.out_proj.bias before norm2, the block
        before's mlp.2.bias before norm1 and before the head's norm). None on the CPU."""
        m, c = self.model, self.model.config
        if m.xp is np or c.norm != "layernorm":
            return None
        at = {p.name: p for p in m.parameters()}

        def side_by_side(before, norm):
            names = [before, f"{norm}.weight", f"{norm}.bias"]
            for ps in ([at.get(name) for name in names], [at[name] for name in names[1:]]):
                n = ps[-1].data.size
                if all(p is not None and p.data.size == n and p.offset == ps[0].offset + i * n
                       for i, p in enumerate(ps)):
                    return flat[ps[0].offset:ps[0].offset + len(ps) * n].reshape(len(ps), n)
            return None

        return Cache(blocks=[{"norm1": side_by_side(f"blocks.{i - 1}.mlp.2.bias", f"blocks.{i}.norm1"),
                              "norm2": side_by_side(f"blocks.{i}.attn.out_proj.bias", f"blocks.{i}.norm2")}
                             for i in range(c.depth)],
                     head=side_by_side(f"blocks.{c.depth - 1}.mlp.2.bias", "norm"))

    def _backward_pass(self, dlogits, cache, g, need_dx, spans=None):
        c, xp = self.model.config, self.model.xp
        head, embed = cache.head, cache.embed
        dz = linear_backward_into(dlogits, head.linear, g["head.weight"], g["head.bias"])
        cls_only = head.pool.h_shape[1] == 1   # the class-token-only last block: nothing to pool
        if xp is np:
            dpooled = norm_backward_into(dz, head.norm, g)                   # [B, D]
        else:                   # with cls_only, the norm's dx is the last block's dy: its mlp.2.bias
            sums, summed = column_sums(spans and spans.head, cls_only and cache.blocks[-1].k2 is None)
            dpooled = norm_backward_gpu(dz, head.norm, g, sums)             # [B, D]
        if cls_only:
            dh = dpooled[:, None, :]                                         # [B, 1, D]
        else:
            dh, dpool_w = transformer.pool_backward(dpooled, head.pool)      # [B, N, D]
            if dpool_w is not None:                                          # pool "seq"
                g[transformer.SEQ_POOL_WEIGHT][...] = dpool_w
        for i in reversed(range(c.depth)):
            g_i = transformer.block_params(g, i)
            if xp is np:
                dh = block_backward_into(dh, cache.blocks[i], g_i, xp)
            else:               # norm1's dx is the block before's dy: its mlp.2.bias
                block_spans = dict(spans.blocks[i]) if spans else {}
                block_spans["norm1"], takes = column_sums(
                    block_spans.get("norm1"), i > 0 and cache.blocks[i - 1].k2 is None)
                dh = block_backward_gpu(dh, cache.blocks[i], g_i, xp, block_spans, dy_summed=summed)
                summed = takes
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
