"""Every layer of the ViT as a forward/backward pair.

The pattern (as in CS231n's layers.py):

    out, cache = thing_forward(x, params...)     # cache: what backward needs
    dx, dparams... = thing_backward(dout, cache)  # gradient of every input, in order

``dout`` is dL/d(out) for some scalar loss L; each backward returns dL/d(input) for
every array input of its forward, in the order the forward takes them. Each backward
sits right under its forward with the derivation in its docstring. The code is written
once against ``xp`` (NumPy or CuPy, whichever owns the input), so it runs on both.

Shapes: B batch, C channels, H/W image height/width, p patch size, P = (H/p)(W/p)
patches, N = P + 1 tokens (the class token first), D embedding width, h heads,
d = D/h head width, F hidden width of the MLP.
"""

import math

from . import fast
from .backend import array_module, erf


# ----------------------------------------------------------------------------- linear

def linear_forward(x, w, b):
    """y = x W^T + b, over the last axis of x.  x [..., Din], w [Dout, Din], b [Dout]."""
    x2 = x.reshape(-1, x.shape[-1])                 # [M, Din]  (M = all leading dims)
    y = x2 @ w.T                                    # [M, Dout]
    if b is not None:
        y += b
    return y.reshape(*x.shape[:-1], w.shape[0]), (x2, w, x.shape)


def linear_backward(dy, cache):
    """y_mj = sum_i x_mi W_ji + b_j, so

        dx = dy W          [M, Din]
        dW = dy^T x        [Dout, Din]   (summed over every row m)
        db = sum_m dy      [Dout]
    """
    x2, w, x_shape = cache
    dy2 = dy.reshape(-1, w.shape[0])                # [M, Dout]
    dx = (dy2 @ w).reshape(x_shape)                 # [..., Din]
    dw = dy2.T @ x2                                 # [Dout, Din]
    db = dy2.sum(axis=0)                            # [Dout]
    return dx, dw, db


# ------------------------------------------------------------- conv patch embedding

def patchify(x, p):
    """[B, C, H, W] -> [B, P, C*p*p]: cut the image into p x p patches, row-major,
    each flattened in (channel, row, column) order, the order of a conv kernel."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // p, p, W // p, p)       # [B, C, H/p, p, W/p, p]
    x = x.transpose(0, 2, 4, 1, 3, 5)               # [B, H/p, W/p, C, p, p]
    return x.reshape(B, (H // p) * (W // p), C * p * p)


def unpatchify(patches, image_shape, p):
    """The inverse of patchify: [B, P, C*p*p] -> [B, C, H, W]."""
    B, C, H, W = image_shape
    x = patches.reshape(B, H // p, W // p, C, p, p)  # [B, H/p, W/p, C, p, p]
    x = x.transpose(0, 3, 1, 4, 2, 5)               # [B, C, H/p, p, W/p, p]
    return x.reshape(B, C, H, W)


def patch_embed_forward(x, w, b):
    """A conv with kernel = stride = p, done as one matmul.

    x [B, C, H, W], w [D, C, p, p] (the conv weight), b [D]  ->  y [B, P, D].
    Because the patches do not overlap, the conv is exactly a linear layer applied to
    every flattened patch: y = patchify(x) W_flat^T + b with W_flat = w.reshape(D, C*p*p).
    """
    D, C, p, _ = w.shape
    patches = patchify(x, p)                        # [B, P, C*p*p]
    y, lin_cache = linear_forward(patches, w.reshape(D, C * p * p), b)  # [B, P, D]
    return y, (lin_cache, x.shape, w.shape)


def patch_embed_backward(dy, cache):
    """The linear backward on the patches, then every patch gradient put back in its
    place in the image (patches do not overlap, so nothing is summed):

        dpatches, dW_flat, db = linear_backward(dy)
        dx = unpatchify(dpatches),   dw = dW_flat.reshape(D, C, p, p)
    """
    lin_cache, x_shape, w_shape = cache
    dpatches, dw, db = linear_backward(dy, lin_cache)  # [B, P, C*p*p], [D, C*p*p], [D]
    return unpatchify(dpatches, x_shape, w_shape[2]), dw.reshape(w_shape), db


# ------------------------------------------- class token + learned position embedding

def token_embed_forward(x, cls_token, pos_embed):
    """Prepend the class token to the patch tokens, then add the position embedding.

    x [B, P, D], cls_token [1, 1, D], pos_embed [1, N, D] (N = P + 1) -> y [B, N, D]
        y[:, 0] = cls + pos[0],   y[:, 1:] = x + pos[1:]
    """
    xp = array_module(x)
    B, P, D = x.shape
    y = xp.empty((B, P + 1, D), dtype=x.dtype)     # [B, N, D]
    y[:, :1] = cls_token
    y[:, 1:] = x
    y += pos_embed
    return y, None


def token_embed_backward(dy, cache):
    """Each input is copied into y (the class token and the position embedding once
    per image), so its gradient is the matching slice of dy, summed over the copies:

        dx = dy[:, 1:],   dcls = sum_b dy[b, 0],   dpos = sum_b dy[b]
    """
    dx = dy[:, 1:]                                  # [B, P, D]
    dcls = dy[:, :1].sum(axis=0, keepdims=True)     # [1, 1, D]
    dpos = dy.sum(axis=0, keepdims=True)            # [1, N, D]
    return dx, dcls, dpos


# ------------------------------------------------------------------------- layernorm

def layernorm_forward(x, w, b, eps=1e-5):
    """Normalize every row of the last axis, then scale and shift.

    x [..., D], w [D], b [D]:  mu = mean(x),  var = mean((x - mu)^2)  (biased, as torch),
    r = 1/sqrt(var + eps),  xhat = (x - mu) r,  y = xhat w + b.
    """
    xp = array_module(x)
    mu = x.mean(axis=-1, keepdims=True)             # [..., 1]
    xc = x - mu                                     # [..., D]
    var = (xc * xc).mean(axis=-1, keepdims=True)    # [..., 1]
    rstd = 1.0 / xp.sqrt(var + eps)                 # [..., 1]
    xhat = xc * rstd                                # [..., D]
    return xhat * w + b, (xhat, rstd, w)


def layernorm_backward(dy, cache):
    """With g = dy * w (the gradient reaching xhat) and xhat = (x - mu) r:

        dx = r (g - mean(g) - xhat mean(g xhat))     (means over the last axis)
        dw = sum(dy xhat),   db = sum(dy)            (sums over every row)

    The two subtracted terms are the paths through mu and through r: d mu/dx_i = 1/D
    and d r/dx_i = -r^3 (x_i - mu)/D.
    """
    xhat, rstd, w = cache
    D = w.shape[0]
    dw = (dy * xhat).reshape(-1, D).sum(axis=0)                 # [D]
    db = dy.reshape(-1, D).sum(axis=0)                          # [D]
    g = dy * w                                                  # [..., D]
    g_xhat_mean = (g * xhat).mean(axis=-1, keepdims=True)       # [..., 1]
    g -= g.mean(axis=-1, keepdims=True)                         # in place from here on
    g -= xhat * g_xhat_mean
    g *= rstd
    return g, dw, db


# --------------------------------------------------------------------------- softmax

def softmax_forward(s):
    """a = exp(s - max s) / sum exp(s - max s), over the last axis (max: for stability)."""
    xp = array_module(s)
    a = s - s.max(axis=-1, keepdims=True)
    xp.exp(a, out=a)                                   # in place: no new temporaries
    a /= a.sum(axis=-1, keepdims=True)
    return a, a


def softmax_backward(da, cache):
    """da_i/ds_j = a_i (delta_ij - a_j), so ds_j = sum_i da_i a_i (delta_ij - a_j):

        ds = a (da - sum(da a))     (sum over the last axis)
    """
    a = cache
    ds = da - (da * a).sum(axis=-1, keepdims=True)
    ds *= a
    return ds


# ------------------------------------------------------------------------------ GELU

GELU_KINDS = ("exact", "tanh")
_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu_forward(x, approximate="exact"):
    """GELU(x) = x Phi(x), Phi the standard normal CDF.

    "exact" (torch.nn.GELU()):        Phi(x) = (1 + erf(x / sqrt 2)) / 2
    "tanh"  (GELU(approximate="tanh")): Phi(x) ~ (1 + tanh(u)) / 2,
                                        u = sqrt(2/pi) (x + 0.044715 x^3)
    """
    xp = array_module(x)
    if approximate == "exact" and fast.applies(x):
        # the same math, blocked, with a float32 erf (fast.py); GELU'(x) is computed here
        # while x is in the cache, so the backward is one product
        y, dgelu = fast.gelu_forward(x)
        return y, (None, None, approximate, dgelu)     # x is not kept: backward needs dgelu only
    if approximate == "exact":
        cdf = erf(x * (1.0 / _SQRT_2))
    elif approximate == "tanh":
        cdf = x * x
        cdf *= 0.044715
        cdf += 1.0
        cdf *= x
        cdf *= _SQRT_2_OVER_PI
        xp.tanh(cdf, out=cdf)
    else:
        raise ValueError(f"unknown GELU approximation {approximate!r}: use one of {GELU_KINDS}")
    cdf += 1.0                          # in place: big temporaries cost time on the CPU
    cdf *= 0.5
    return x * cdf, (x, cdf, approximate, None)


def gelu_backward(dy, cache):
    """dx = dy * GELU'(x).

    exact:  GELU'(x) = Phi(x) + x phi(x),  phi(x) = exp(-x^2/2) / sqrt(2 pi)
    tanh:   with t = tanh(u) = 2 Phi - 1:
            GELU'(x) = (1 + t)/2 + x (1 - t^2)/2 * sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    """
    xp = array_module(dy)
    x, cdf, approximate, dgelu = cache
    if dgelu is not None:                # the fast path computed GELU'(x) in the forward
        return dy * dgelu
    if approximate == "exact":
        grad = x * x                    # x phi(x) = x exp(-x^2/2) / sqrt(2 pi), in place
        grad *= -0.5
        xp.exp(grad, out=grad)
        grad *= _INV_SQRT_2PI
    else:
        t = 2.0 * cdf - 1.0             # 0.5 (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
        t *= t
        xp.subtract(1.0, t, out=t)
        grad = x * x
        grad *= 3 * 0.044715
        grad += 1.0
        grad *= t
        grad *= 0.5 * _SQRT_2_OVER_PI
    grad *= x
    grad += cdf
    grad *= dy
    return grad


# ------------------------------------------------------------ multi-head self-attention

def attention_forward(x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, num_heads,
                      num_queries=None):
    """Multi-head self-attention, laid out like torch.nn.MultiheadAttention.

    x [B, N, D]; in_proj_weight [3D, D] holds W_q, W_k, W_v stacked (rows 0:D, D:2D,
    2D:3D; head j uses rows j*d:(j+1)*d of each); out_proj_weight [D, D].

        q, k, v = split(x W_in^T + b_in)            each [B, h, N, d]
        s = q k^T / sqrt(d)                         [B, h, N, N]
        a = softmax(s)                              [B, h, N, N]  (rows sum to one)
        o = a v, heads concatenated                 [B, N, D]
        y = o W_out^T + b_out                       [B, N, D]

    num_queries: when set to Q, only the first Q tokens ask (q keeps its first Q rows,
    every token still gives its key and value), so y is [B, Q, D]: the rows of the full y
    that a caller needing only those tokens would keep.
    """
    B, N, D = x.shape
    H = num_heads
    d = D // H
    scale = 1.0 / math.sqrt(d)
    qkv, in_cache = linear_forward(x, in_proj_weight, in_proj_bias)   # [B, N, 3D]
    qkv = qkv.reshape(B, N, 3, H, d).transpose(2, 0, 3, 1, 4)        # [3, B, h, N, d]
    q, k, v = qkv[0], qkv[1], qkv[2]                                  # [B, h, N, d] each
    if num_queries is not None:
        q = q[:, :, :num_queries]                                     # [B, h, Q, d]
    Q = q.shape[2]
    s = q @ k.transpose(0, 1, 3, 2)                                   # [B, h, Q, N]
    s *= scale
    a, _ = softmax_forward(s)                                         # [B, h, Q, N]
    o = (a @ v).transpose(0, 2, 1, 3).reshape(B, Q, D)                # [B, Q, D]
    y, out_cache = linear_forward(o, out_proj_weight, out_proj_bias)  # [B, Q, D]
    return y, (in_cache, out_cache, q, k, v, a, scale)


def attention_backward(dy, cache):
    """Back through each line of the forward, last line first:

        do, dW_out, db_out = linear_backward(dy)            do split into heads [B, h, Q, d]
        o = a v        ->  da = do v^T,   dv = a^T do
        a = softmax(s) ->  ds = a (da - sum(da a))          (softmax_backward)
        s = q k^T / sqrt(d)  ->  dq = ds k / sqrt(d),   dk = ds^T q / sqrt(d)
        dq, dk, dv stacked back to [B, N, 3D]  ->  dx, dW_in, db_in = linear_backward

    With num_queries = Q < N the tokens that did not ask get no dq (their rows of dq are
    zero): their gradient comes only through their keys and values.
    """
    in_cache, out_cache, q, k, v, a, scale = cache
    xp = array_module(dy)
    B, H, Q, d = q.shape
    N = k.shape[2]
    do, dw_out, db_out = linear_backward(dy, out_cache)               # [B, Q, D]
    do = do.reshape(B, Q, H, d).transpose(0, 2, 1, 3)                 # [B, h, Q, d]
    da = do @ v.transpose(0, 1, 3, 2)                                 # [B, h, Q, N]
    dv = a.transpose(0, 1, 3, 2) @ do                                 # [B, h, N, d]
    ds = softmax_backward(da, a)                                      # [B, h, Q, N]
    ds *= scale
    dq = ds @ k                                                       # [B, h, Q, d]
    dk = ds.transpose(0, 1, 3, 2) @ q                                 # [B, h, N, d]
    dqkv = xp.empty((B, N, 3, H, d), dtype=dy.dtype)                  # [B, N, 3, h, d]
    for i, g in enumerate((dq, dk, dv)):
        dqkv[:, :g.shape[2], i] = g.transpose(0, 2, 1, 3)
    if Q < N:
        dqkv[:, Q:, 0] = 0                                            # tokens that did not ask
    dx, dw_in, db_in = linear_backward(dqkv.reshape(B, N, 3 * H * d), in_cache)
    return dx, dw_in, db_in, dw_out, db_out


# ------------------------------------------------------------------------------- MLP

def mlp_forward(x, w1, b1, w2, b2, approximate="exact"):
    """Linear -> GELU -> Linear (torch: nn.Sequential(Linear, GELU, Linear), so the
    weights are named mlp.0.* and mlp.2.*).  x [..., D], w1 [F, D], w2 [D, F]."""
    h, c1 = linear_forward(x, w1, b1)               # [..., F]
    g, cg = gelu_forward(h, approximate)            # [..., F]
    y, c2 = linear_forward(g, w2, b2)               # [..., D]
    return y, (c1, cg, c2)


def mlp_backward(dy, cache):
    """The chain rule through the three layers, last first."""
    c1, cg, c2 = cache
    dg, dw2, db2 = linear_backward(dy, c2)
    dh = gelu_backward(dg, cg)
    dx, dw1, db1 = linear_backward(dh, c1)
    return dx, dw1, db1, dw2, db2


# ------------------------------------------------------------- pre-norm transformer block

BLOCK_PARAM_NAMES = (
    "norm1.weight", "norm1.bias",
    "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
    "norm2.weight", "norm2.bias",
    "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias",
)


def block_forward(x, p, num_heads, approximate="exact", keep=None, cls_only=False):
    """x1 = x + attn(norm1(x));  y = x1 + mlp(norm2(x1)).

    x [B, N, D]; p maps the names in BLOCK_PARAM_NAMES to arrays.
    keep: None, or stochastic depth's two masks (k1, k2), each [B, 1, 1] holding 0 (this
    image skips the branch) or 1/(1 - rate): x1 = x + k1 attn(...), y = x1 + k2 mlp(...).
    cls_only: return only the class token's row, y[:, :1] ([B, 1, D]). Everything after
    attention works token by token, so only the class token's query, attention output,
    residual and MLP are computed: what the last block of a model whose head reads the
    class token needs (every token still gives its key and value).
    """
    h, c_n1 = layernorm_forward(x, p["norm1.weight"], p["norm1.bias"])
    h, c_at = attention_forward(h, p["attn.in_proj_weight"], p["attn.in_proj_bias"],
                                p["attn.out_proj.weight"], p["attn.out_proj.bias"], num_heads,
                                num_queries=1 if cls_only else None)
    if keep is not None:
        h *= keep[0]
    x1 = (x[:, :1] if cls_only else x) + h                           # [B, N or 1, D]
    h, c_n2 = layernorm_forward(x1, p["norm2.weight"], p["norm2.bias"])
    h, c_mlp = mlp_forward(h, p["mlp.0.weight"], p["mlp.0.bias"],
                           p["mlp.2.weight"], p["mlp.2.bias"], approximate)
    if keep is not None:
        h *= keep[1]
    return x1 + h, (c_n1, c_at, c_n2, c_mlp, keep, cls_only)


def block_backward(dy, cache):
    """A residual y = x + f(x) passes dy straight through and adds f's path:
    dx = dy + f_backward(dy). Applied to the MLP half, then the attention half.

    With stochastic depth a branch output is scaled by its mask k, so the gradient
    entering the branch is k dy (zero for the images that skipped it).
    With cls_only, dy is [B, 1, D]: the residual paths reach only the class token, while
    the attention branch sends gradient to every token (through keys and values).

    Returns dx and a dict of parameter gradients keyed like BLOCK_PARAM_NAMES.
    """
    c_n1, c_at, c_n2, c_mlp, keep, cls_only = cache
    dh, dw1, db1, dw2, db2 = mlp_backward(dy if keep is None else dy * keep[1], c_mlp)
    dh, dn2w, dn2b = layernorm_backward(dh, c_n2)
    dx1 = dy + dh                                                     # [B, N or 1, D]
    dh, din_w, din_b, dout_w, dout_b = attention_backward(
        dx1 if keep is None else dx1 * keep[0], c_at)
    dx, dn1w, dn1b = layernorm_backward(dh, c_n1)                     # [B, N, D]
    if cls_only:
        dx[:, :1] += dx1
    else:
        dx += dx1
    grads = (dn1w, dn1b, din_w, din_b, dout_w, dout_b, dn2w, dn2b, dw1, db1, dw2, db2)
    return dx, dict(zip(BLOCK_PARAM_NAMES, grads))


def block_attention(cache):
    """The attention probabilities a [B, h, N, N] kept in a block_forward cache
    ([B, h, 1, N] for a cls_only block: the class token's row)."""
    return cache[1][5]
