"""What the ViT builds from the layers of py, in the same forward/backward pattern:
multi-head self-attention, the MLP, the pre-norm transformer block, and the head (pooling
the tokens, a norm, a linear layer). Each backward returns the gradient of every input;
where a function takes a dict of parameters p (keyed by the model's names), its backward
returns their gradients in a dict with the same keys.

Shapes: B batch, N tokens (the class token first), P = N - 1 patch tokens, D width,
h heads, d = D/h head width, F hidden width of the MLP, K classes.
"""

import math
from types import SimpleNamespace as Cache

from .backend import array_module
from .layers import (GELUS, linear_backward, linear_forward, norm_backward, norm_forward,
                     norm_param_shapes, softmax_backward, softmax_forward)


# ------------------------------------------------------------ multi-head self-attention

def split_heads(t, num_heads):
    """[B, N, D] -> [B, h, N, d]: head j takes channels j*d:(j+1)*d."""
    B, N, D = t.shape
    return t.reshape(B, N, num_heads, D // num_heads).transpose(0, 2, 1, 3)


def merge_heads(t):
    """The inverse of split_heads: [B, h, N, d] -> [B, N, h*d]."""
    B, h, N, d = t.shape
    return t.transpose(0, 2, 1, 3).reshape(B, N, h * d)


def sdpa_forward(q, k, v):
    """Scaled dot-product attention of every head at once.

    q [B, h, Nq, d], k and v [B, h, N, d]:
        s = q k^T / sqrt(d)      [B, h, Nq, N]
        a = softmax(s)           [B, h, Nq, N]   (each row sums to one)
        o = a v                  [B, h, Nq, d]
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = (q @ k.transpose(0, 1, 3, 2)) * scale                        # [B, h, Nq, N]
    a, c_soft = softmax_forward(s)                                    # [B, h, Nq, N]
    o = a @ v                                                         # [B, h, Nq, d]
    return o, Cache(q=q, k=k, v=v, a=a, softmax=c_soft, scale=scale)


def sdpa_backward(do, cache):
    """The matrix-product rule (Z = XY -> dX = dZ Y^T, dY = X^T dZ) on each line:

        o = a v              ->  da = do v^T,        dv = a^T do
        a = softmax(s)       ->  ds = a (da - sum(da a))
        s = q k^T / sqrt(d)  ->  dq = ds k / sqrt(d), dk = ds^T q / sqrt(d)
    """
    q, k, v, a = cache.q, cache.k, cache.v, cache.a
    da = do @ v.transpose(0, 1, 3, 2)                                 # [B, h, Nq, N]
    dv = a.transpose(0, 1, 3, 2) @ do                                 # [B, h, N, d]
    ds = softmax_backward(da, cache.softmax) * cache.scale            # [B, h, Nq, N]
    dq = ds @ k                                                       # [B, h, Nq, d]
    dk = ds.transpose(0, 1, 3, 2) @ q                                 # [B, h, N, d]
    return dq, dk, dv


def attention_forward(x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, num_heads):
    """Multi-head self-attention, laid out like torch.nn.MultiheadAttention.

    x [B, N, D]; in_proj_weight [3D, D] holds W_q, W_k, W_v stacked (rows 0:D, D:2D,
    2D:3D; head j uses rows j*d:(j+1)*d of each); out_proj_weight [D, D].

        q, k, v = split(x W_in^T + b_in)            each [B, h, N, d]
        o = sdpa(q, k, v), heads concatenated       [B, N, D]
        y = o W_out^T + b_out                       [B, N, D]
    """
    D = x.shape[-1]
    qkv, c_in = linear_forward(x, in_proj_weight, in_proj_bias)      # [B, N, 3D]
    q, k, v = (split_heads(qkv[..., i * D:(i + 1) * D], num_heads) for i in range(3))
    o, c_sdpa = sdpa_forward(q, k, v)                                # [B, h, N, d]
    y, c_out = linear_forward(merge_heads(o), out_proj_weight, out_proj_bias)  # [B, N, D]
    return y, Cache(linear_in=c_in, sdpa=c_sdpa, linear_out=c_out, num_heads=num_heads)


def attention_backward(dy, cache):
    """Back through each line of the forward, last line first:

        do, dW_out, db_out = linear_backward(dy)        do split into heads [B, h, N, d]
        dq, dk, dv = sdpa_backward(do)
        dq, dk, dv merged and stacked to [B, N, 3D]  ->  dx, dW_in, db_in = linear_backward
    """
    xp = array_module(dy)
    do, dw_out, db_out = linear_backward(dy, cache.linear_out)        # [B, N, D]
    dq, dk, dv = sdpa_backward(split_heads(do, cache.num_heads), cache.sdpa)
    dqkv = xp.concatenate([merge_heads(g) for g in (dq, dk, dv)], axis=-1)  # [B, N, 3D]
    dx, dw_in, db_in = linear_backward(dqkv, cache.linear_in)
    return dx, dw_in, db_in, dw_out, db_out


# ------------------------------------------------------------------------------- MLP

def mlp_forward(x, w1, b1, w2, b2, gelu="exact"):
    """Linear -> GELU -> Linear (torch: nn.Sequential(Linear, GELU, Linear), so the
    weights are named mlp.0.* and mlp.2.*).  x [..., D], w1 [F, D], w2 [D, F].
    gelu: a name in GELUS."""
    gelu_fwd, gelu_bwd = GELUS[gelu]
    h, c1 = linear_forward(x, w1, b1)               # [..., F]
    g, cg = gelu_fwd(h)                             # [..., F]
    y, c2 = linear_forward(g, w2, b2)               # [..., D]
    return y, Cache(linear1=c1, gelu=cg, gelu_backward=gelu_bwd, linear2=c2)


def mlp_backward(dy, cache):
    """The chain rule through the three layers, last first."""
    dg, dw2, db2 = linear_backward(dy, cache.linear2)
    dh = cache.gelu_backward(dg, cache.gelu)
    dx, dw1, db1 = linear_backward(dh, cache.linear1)
    return dx, dw1, db1, dw2, db2


# ------------------------------------------------------------- pre-norm transformer block

def block_param_shapes(D, F, norm="layernorm"):
    """{name: shape} of one block's parameters, in PyTorch's order (F: the MLP width;
    norm: the model's normalization, RMSNorm has no bias)."""
    return {
        **norm_param_shapes("norm1", D, norm),
        "attn.in_proj_weight": (3 * D, D), "attn.in_proj_bias": (3 * D,),
        "attn.out_proj.weight": (D, D), "attn.out_proj.bias": (D,),
        **norm_param_shapes("norm2", D, norm),
        "mlp.0.weight": (F, D), "mlp.0.bias": (F,), "mlp.2.weight": (D, F), "mlp.2.bias": (D,),
    }


def block_params(p, i):
    """The entries of block i in p, a dict keyed by the model's names (its parameters, or
    anything laid out like them), keyed by block_param_shapes' names."""
    prefix = f"blocks.{i}."
    return {k[len(prefix):]: v for k, v in p.items() if k.startswith(prefix)}


def block_forward(x, p, num_heads, gelu="exact", keep=None, norm="layernorm"):
    """x1 = x + attn(norm1(x));  y = x1 + mlp(norm2(x1)).

    x [B, N, D]; p maps the names of block_param_shapes to arrays.
    keep: None, or stochastic depth's two masks (k1, k2) of this block (draws.py), each
    [B, 1, 1] holding 0 (this image skips the branch) or 1/(1 - rate):
    x1 = x + k1 attn(...), y = x1 + k2 mlp(...).
    """
    k1, k2 = keep if keep is not None else (1.0, 1.0)
    h, c_n1 = norm_forward(x, p, "norm1", norm)
    h, c_attn = attention_forward(h, p["attn.in_proj_weight"], p["attn.in_proj_bias"],
                                  p["attn.out_proj.weight"], p["attn.out_proj.bias"], num_heads)
    x1 = x + k1 * h                                                   # [B, N, D]
    h, c_n2 = norm_forward(x1, p, "norm2", norm)
    h, c_mlp = mlp_forward(h, p["mlp.0.weight"], p["mlp.0.bias"],
                           p["mlp.2.weight"], p["mlp.2.bias"], gelu)
    y = x1 + k2 * h                                                   # [B, N, D]
    return y, Cache(norm1=c_n1, attn=c_attn, norm2=c_n2, mlp=c_mlp, k1=k1, k2=k2)


def block_backward(dy, cache):
    """A residual y = x + f(x) passes dy straight through and adds f's path:
    dx = dy + f_backward(dy). Applied to the MLP half, then the attention half.

    With stochastic depth a branch output is scaled by its mask k, so the gradient
    entering the branch is k dy (zero for the images that skipped it).

    Returns dx and a dict of parameter gradients keyed like block_param_shapes.
    """
    c = cache
    dh, dw1, db1, dw2, db2 = mlp_backward(c.k2 * dy, c.mlp)
    dh, grads = norm_backward(dh, c.norm2)                            # norm2.weight (, .bias)
    grads.update({"mlp.0.weight": dw1, "mlp.0.bias": db1, "mlp.2.weight": dw2, "mlp.2.bias": db2})
    dx1 = dy + dh                                                     # [B, N, D]
    dh, din_w, din_b, dout_w, dout_b = attention_backward(c.k1 * dx1, c.attn)
    grads.update({"attn.in_proj_weight": din_w, "attn.in_proj_bias": din_b,
                  "attn.out_proj.weight": dout_w, "attn.out_proj.bias": dout_b})
    dh, norm1_grads = norm_backward(dh, c.norm1)
    grads.update(norm1_grads)
    dx = dx1 + dh                                                     # [B, N, D]
    return dx, grads


# ------------------------------------------------------------------ the head's pooling

# the model's parameter of sequence pooling (CCT's name for it)
SEQ_POOL_WEIGHT = "attention_pool.weight"


def pool_forward(h, pool, w=None):
    """What the head reads of the tokens h [B, N, D] -> [B, D]: the class token's row
    (pool "cls"), the mean of the P = N - 1 patch tokens (pool "mean"), or their
    attention-weighted sum (pool "seq", with its weight w [1, D]: seq_pool_forward)."""
    if pool == "seq":
        if w is None:
            raise ValueError(f"pool 'seq' needs its weight: pass the model's {SEQ_POOL_WEIGHT} as w")
        return seq_pool_forward(h, w)
    pooled = h[:, 0] if pool == "cls" else h[:, 1:].mean(axis=1)
    return pooled, Cache(pool=pool, h_shape=h.shape)


def pool_backward(dpooled, cache):
    """-> (dh [B, N, D], dw): the class token's row gets dpooled (the other rows 0), or,
    for the mean, each patch token gets dpooled / P; dw is None, these have no weight.
    Pool "seq": seq_pool_backward."""
    if cache.pool == "seq":
        return seq_pool_backward(dpooled, cache)
    dh = array_module(dpooled).zeros(cache.h_shape, dtype=dpooled.dtype)
    if cache.pool == "cls":
        dh[:, 0] = dpooled
    else:
        dh[:, 1:] = dpooled[:, None, :] / (cache.h_shape[1] - 1)
    return dh, None


def seq_pool_forward(h, w):
    """Sequence pooling (CCT): each patch token h_p gets a score s_p = h_p . w, the scores
    a softmax over the P patch tokens, and the pooled vector is the weighted sum
        s = h_patches w^T,   a = softmax_p(s),   pooled = sum_p a_p h_p.
    h [B, N, D] (the class token, row 0, is left out), w [1, D]. A bias on the score
    would cancel in the softmax, so there is none."""
    hp = h[:, 1:]                                           # [B, P, D]
    s = (hp @ w.T)[..., 0]                                  # [B, P]
    a, c_soft = softmax_forward(s)                          # [B, P]
    pooled = (a[:, None, :] @ hp)[:, 0]                     # [B, D]
    return pooled, Cache(pool="seq", hp=hp, w=w, softmax=c_soft, h_shape=h.shape)


def seq_pool_backward(dpooled, cache):
    """pooled = sum_p a_p h_p reaches h_p twice: directly (weight a_p) and through the
    score s_p = h_p . w that a depends on. With g = dpooled [B, D]:
        da_p = g . h_p                          (pooled is linear in a)
        ds   = softmax_backward(da)             = a (da - sum_p a_p da_p)
        dh_p = a_p g + ds_p w                   (direct + through the score)
        dw   = sum_b sum_p ds_bp h_bp
    The class token's row of dh is 0. -> (dh [B, N, D], dw [1, D])."""
    hp, w, a = cache.hp, cache.w, cache.softmax.a
    xp = array_module(dpooled)
    da = (hp @ dpooled[:, :, None])[..., 0]                 # [B, P]
    ds = softmax_backward(da, cache.softmax)                # [B, P]
    dh = xp.zeros(cache.h_shape, dtype=dpooled.dtype)       # [B, N, D]
    dh[:, 1:] = a[:, :, None] * dpooled[:, None, :] + ds[:, :, None] * w   # [B, P, D]
    dw = ds.reshape(1, -1) @ hp.reshape(-1, hp.shape[-1])   # [1, D]
    return dh, dw


# ---------------------------------------------------------------------------- the head

def head_param_shapes(D, K, pool="cls", norm="layernorm"):
    """{name: shape} of the head's parameters (sequence pooling's weight first)."""
    shapes = {SEQ_POOL_WEIGHT: (1, D)} if pool == "seq" else {}
    return {**shapes, **norm_param_shapes("norm", D, norm), "head.weight": (K, D), "head.bias": (K,)}


def head_forward(h, p, pool="cls", norm="layernorm"):
    """Pool the tokens h [B, N, D], normalize, classify -> logits [B, K].

        pooled = h[:, 0] (pool "cls"), the mean of the P patch tokens (pool "mean"),
                 or sum_p softmax_p(h_p . w) h_p (pool "seq", w = p["attention_pool.weight"])
        logits = norm(pooled) W^T + b          (W, b: p["head.weight"], p["head.bias"])
    The norm comes after the pooling: with "mean" this is LN(mean of the tokens)."""
    pooled, c_pool = pool_forward(h, pool, p.get(SEQ_POOL_WEIGHT))                # [B, D]
    z, c_norm = norm_forward(pooled, p, "norm", norm)                             # [B, D]
    logits, c_lin = linear_forward(z, p["head.weight"], p["head.bias"])           # [B, K]
    return logits, Cache(pool=c_pool, norm=c_norm, linear=c_lin)


def head_backward(dlogits, cache):
    """-> (dh [B, N, D], {parameter name: gradient}). The linear and norm backwards give
    dpooled [B, D]; the class token's row gets all of it (pool "cls"), each of the P patch
    tokens 1/P of it (pool "mean"), or what seq_pool_backward derives (pool "seq")."""
    dz, dw, db = linear_backward(dlogits, cache.linear)                           # [B, D]
    dpooled, grads = norm_backward(dz, cache.norm)                                # [B, D]
    grads.update({"head.weight": dw, "head.bias": db})
    dh, dpool_w = pool_backward(dpooled, cache.pool)                              # [B, N, D]
    if dpool_w is not None:
        grads[SEQ_POOL_WEIGHT] = dpool_w
    return dh, grads
