"""Every layer of the ViT as a forward/backward pair: the reference path.

The pattern (as in CS231n's layers.py):

    out, cache = thing_forward(x, params...)     # cache: what backward needs, by name
    dx, dparams... = thing_backward(dout, cache)  # gradient of every input, in order

``dout`` is dL/d(out) for some scalar loss L; each backward returns dL/d(input) for
every array input of its forward, in the order the forward takes them. Each backward
sits right under its forward with the derivation in its docstring (docs/gradients.md
derives them at length). The code is written once against ``xp`` (NumPy or CuPy,
whichever owns the input), so it runs on both.

This file is the math as a student would write it. Faster ways to compute the same
numbers live in fast.py, which tests check against these functions. The area resizing
of progressive resizing (smaller images early in training) is in resize.py.

Shapes: B batch, C channels, H/W image height/width, p patch size, P = (H/p)(W/p)
patches, N = P + 1 tokens (the class token first), D embedding width, h heads,
d = D/h head width, F hidden width of the MLP.
"""

import math
from types import SimpleNamespace as Cache

from .backend import array_module, erf


# ----------------------------------------------------------------------------- linear

def linear_forward(x, w, b):
    """y = x W^T + b, over the last axis of x.  x [..., Din], w [Dout, Din], b [Dout]."""
    x2 = x.reshape(-1, x.shape[-1])                 # [M, Din]  (M = all leading dims)
    y = x2 @ w.T + b                                # [M, Dout]
    return y.reshape(*x.shape[:-1], w.shape[0]), Cache(x2=x2, w=w, x_shape=x.shape)


def linear_backward(dy, cache, need_dx=True):
    """y_mj = sum_i x_mi W_ji + b_j, so

        dx = dy W          [M, Din]   (None with need_dx=False: an input no one trains)
        dW = dy^T x        [Dout, Din]   (summed over every row m)
        db = sum_m dy      [Dout]
    """
    dy2 = dy.reshape(-1, cache.w.shape[0])          # [M, Dout]
    dx = (dy2 @ cache.w).reshape(cache.x_shape) if need_dx else None  # [..., Din]
    dw = dy2.T @ cache.x2                           # [Dout, Din]
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
    y, c_lin = linear_forward(patches, w.reshape(D, C * p * p), b)  # [B, P, D]
    return y, Cache(linear=c_lin, x_shape=x.shape, w_shape=w.shape)


def patch_embed_backward(dy, cache):
    """The linear backward on the patches, then every patch gradient put back in its
    place in the image (patches do not overlap, so nothing is summed):

        dpatches, dW_flat, db = linear_backward(dy)
        dx = unpatchify(dpatches),   dw = dW_flat.reshape(D, C, p, p)
    """
    dpatches, dw, db = linear_backward(dy, cache.linear)  # [B, P, C*p*p], [D, C*p*p], [D]
    p = cache.w_shape[2]
    return unpatchify(dpatches, cache.x_shape, p), dw.reshape(cache.w_shape), db


# ------------------------------------------------------- convolution (the conv stem)

def conv2d_forward(x, w, b, stride=1, padding=1):
    """A k x k convolution with stride and zero padding, as torch.nn.Conv2d.

    x [B, C, H, W], w [Co, C, k, k], b [Co] -> y [B, Co, Ho, Wo], Ho = (H + 2 pad - k) // s + 1.
    Every output pixel is a linear layer on the k x k window under it (im2col):
        cols[b, (ho, wo), (c, i, j)] = xpad[b, c, s ho + i, s wo + j]
        y = cols W_flat^T + b,   W_flat = w.reshape(Co, C k k)
    cols is gathered with k*k strided slices of the padded image, one per kernel offset.
    """
    xp = array_module(x)
    B, C, H, W = x.shape
    Co, _, k, _ = w.shape
    Ho, Wo = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    xpad = xp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    cols = xp.empty((B, Ho, Wo, C, k, k), dtype=x.dtype)            # [B, Ho, Wo, C, k, k]
    for i in range(k):
        for j in range(k):
            window = xpad[:, :, i:i + stride * Ho:stride, j:j + stride * Wo:stride]  # [B, C, Ho, Wo]
            cols[:, :, :, :, i, j] = window.transpose(0, 2, 3, 1)
    y, c_lin = linear_forward(cols.reshape(B, Ho * Wo, C * k * k), w.reshape(Co, C * k * k), b)
    y = y.reshape(B, Ho, Wo, Co).transpose(0, 3, 1, 2)               # [B, Co, Ho, Wo]
    return y, Cache(linear=c_lin, x_shape=x.shape, w_shape=w.shape, stride=stride, padding=padding)


def conv2d_backward(dy, cache, need_dx=True):
    """The linear backward on the windows, then every window's gradient added back at
    its place in the padded image (windows overlap when k > s, so gradients sum: col2im),
    and the padding cut off:

        dcols, dW_flat, db = linear_backward(dy as [B, Ho Wo, Co])
        dxpad[b, c, s ho + i, s wo + j] += dcols[b, (ho, wo), (c, i, j)]

    need_dx=False (the first conv of a training step: the images need no gradient)
    skips dcols and the scatter, and returns dx None.
    """
    xp = array_module(dy)
    B, C, H, W = cache.x_shape
    Co, _, k, _ = cache.w_shape
    s, pad = cache.stride, cache.padding
    Ho, Wo = dy.shape[2], dy.shape[3]
    dy2 = dy.transpose(0, 2, 3, 1).reshape(B, Ho * Wo, Co)           # [B, Ho Wo, Co]
    dcols, dw, db = linear_backward(dy2, cache.linear, need_dx)
    if not need_dx:
        return None, dw.reshape(cache.w_shape), db
    dcols = dcols.reshape(B, Ho, Wo, C, k, k)
    dxpad = xp.zeros((B, C, H + 2 * pad, W + 2 * pad), dtype=dy.dtype)
    for i in range(k):
        for j in range(k):
            dxpad[:, :, i:i + s * Ho:s, j:j + s * Wo:s] += dcols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return dxpad[:, :, pad:pad + H, pad:pad + W], dw.reshape(cache.w_shape), db


# ------------------------------------------- class token + learned position embedding

def token_embed_forward(x, cls_token, pos_embed):
    """Prepend the class token to the patch tokens, then add the position embedding.

    x [B, P, D], cls_token [1, 1, D], pos_embed [1, N, D] (N = P + 1) -> y [B, N, D]
        y[:, 0] = cls + pos[0],   y[:, 1:] = x + pos[1:]
    """
    xp = array_module(x)
    B = x.shape[0]
    cls = xp.broadcast_to(cls_token, (B, 1, x.shape[2]))      # [B, 1, D]
    y = xp.concatenate([cls, x], axis=1) + pos_embed          # [B, N, D]
    return y, Cache()


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
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)  # [..., 1]
    rstd = 1.0 / xp.sqrt(var + eps)                 # [..., 1]
    xhat = (x - mu) * rstd                          # [..., D]
    return xhat * w + b, Cache(xhat=xhat, rstd=rstd, w=w)


def layernorm_backward(dy, cache):
    """With g = dy * w (the gradient reaching xhat) and xhat = (x - mu) r:

        dx = r (g - mean(g) - xhat mean(g xhat))     (means over the last axis)
        dw = sum(dy xhat),   db = sum(dy)            (sums over every row)

    The two subtracted terms are the paths through mu and through r: d mu/dx_i = 1/D
    and d r/dx_i = -r^3 (x_i - mu)/D.
    """
    xhat, rstd, w = cache.xhat, cache.rstd, cache.w
    D = w.shape[0]
    dw = (dy * xhat).reshape(-1, D).sum(axis=0)                 # [D]
    db = dy.reshape(-1, D).sum(axis=0)                          # [D]
    g = dy * w                                                  # [..., D]
    dx = rstd * (g - g.mean(axis=-1, keepdims=True)
                 - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, dw, db


# --------------------------------------------------------------------------- softmax

def softmax_forward(s):
    """a = exp(s - max s) / sum exp(s - max s), over the last axis (max: for stability)."""
    xp = array_module(s)
    e = xp.exp(s - s.max(axis=-1, keepdims=True))
    a = e / e.sum(axis=-1, keepdims=True)
    return a, Cache(a=a)


def softmax_backward(da, cache):
    """da_i/ds_j = a_i (delta_ij - a_j), so ds_j = sum_i da_i a_i (delta_ij - a_j):

        ds = a (da - sum(da a))     (sum over the last axis)
    """
    a = cache.a
    return a * (da - (da * a).sum(axis=-1, keepdims=True))


# ------------------------------------------------------------------------------ GELU

# the tanh approximation's constants, here once (kernels.py imports them)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_TANH_COEF = 0.044715


def gelu_forward(x):
    """GELU(x) = x Phi(x), Phi the standard normal CDF (exact, as torch.nn.GELU()):

        Phi(x) = (1 + erf(x / sqrt 2)) / 2
    """
    cdf = 0.5 * (1.0 + erf(x / math.sqrt(2.0)))
    return x * cdf, Cache(x=x, cdf=cdf)


def gelu_backward(dy, cache):
    """dx = dy * GELU'(x),  GELU'(x) = Phi(x) + x phi(x),  phi(x) = exp(-x^2/2) / sqrt(2 pi)."""
    xp = array_module(dy)
    x = cache.x
    pdf = xp.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return dy * (cache.cdf + x * pdf)


def gelu_tanh_forward(x):
    """GELU with the tanh approximation (torch.nn.GELU(approximate="tanh")):

        Phi(x) ~ (1 + t) / 2,   t = tanh(u),   u = sqrt(2/pi) (x + c x^3),   c = 0.044715
    """
    xp = array_module(x)
    t = xp.tanh(SQRT_2_OVER_PI * (x + GELU_TANH_COEF * x ** 3))
    return x * 0.5 * (1.0 + t), Cache(x=x, t=t)


def gelu_tanh_backward(dy, cache):
    """With tanh' = 1 - t^2 and du/dx = sqrt(2/pi) (1 + 3 c x^2):

        GELU'(x) = (1 + t)/2 + x (1 - t^2)/2 * sqrt(2/pi) (1 + 3 c x^2)
    """
    x, t = cache.x, cache.t
    du = SQRT_2_OVER_PI * (1.0 + 3 * GELU_TANH_COEF * x * x)
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)


# a model's `gelu` setting -> its (forward, backward) pair
GELUS = {"exact": (gelu_forward, gelu_backward), "tanh": (gelu_tanh_forward, gelu_tanh_backward)}


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

def block_param_shapes(D, F):
    """{name: shape} of one block's parameters, in PyTorch's order (F: the MLP width)."""
    return {
        "norm1.weight": (D,), "norm1.bias": (D,),
        "attn.in_proj_weight": (3 * D, D), "attn.in_proj_bias": (3 * D,),
        "attn.out_proj.weight": (D, D), "attn.out_proj.bias": (D,),
        "norm2.weight": (D,), "norm2.bias": (D,),
        "mlp.0.weight": (F, D), "mlp.0.bias": (F,), "mlp.2.weight": (D, F), "mlp.2.bias": (D,),
    }


BLOCK_PARAM_NAMES = tuple(block_param_shapes(1, 1))


def block_forward(x, p, num_heads, gelu="exact", keep=None):
    """x1 = x + attn(norm1(x));  y = x1 + mlp(norm2(x1)).

    x [B, N, D]; p maps the names in BLOCK_PARAM_NAMES to arrays.
    keep: None, or stochastic depth's two masks (k1, k2), each [B, 1, 1] holding 0 (this
    image skips the branch) or 1/(1 - rate): x1 = x + k1 attn(...), y = x1 + k2 mlp(...).
    """
    k1, k2 = keep if keep is not None else (1.0, 1.0)
    h, c_n1 = layernorm_forward(x, p["norm1.weight"], p["norm1.bias"])
    h, c_attn = attention_forward(h, p["attn.in_proj_weight"], p["attn.in_proj_bias"],
                                  p["attn.out_proj.weight"], p["attn.out_proj.bias"], num_heads)
    x1 = x + k1 * h                                                   # [B, N, D]
    h, c_n2 = layernorm_forward(x1, p["norm2.weight"], p["norm2.bias"])
    h, c_mlp = mlp_forward(h, p["mlp.0.weight"], p["mlp.0.bias"],
                           p["mlp.2.weight"], p["mlp.2.bias"], gelu)
    y = x1 + k2 * h                                                   # [B, N, D]
    return y, Cache(norm1=c_n1, attn=c_attn, norm2=c_n2, mlp=c_mlp, k1=k1, k2=k2)


def block_backward(dy, cache):
    """A residual y = x + f(x) passes dy straight through and adds f's path:
    dx = dy + f_backward(dy). Applied to the MLP half, then the attention half.

    With stochastic depth a branch output is scaled by its mask k, so the gradient
    entering the branch is k dy (zero for the images that skipped it).

    Returns dx and a dict of parameter gradients keyed like BLOCK_PARAM_NAMES.
    """
    c = cache
    dh, dw1, db1, dw2, db2 = mlp_backward(c.k2 * dy, c.mlp)
    dh, dn2w, dn2b = layernorm_backward(dh, c.norm2)
    dx1 = dy + dh                                                     # [B, N, D]
    dh, din_w, din_b, dout_w, dout_b = attention_backward(c.k1 * dx1, c.attn)
    dh, dn1w, dn1b = layernorm_backward(dh, c.norm1)
    dx = dx1 + dh                                                     # [B, N, D]
    grads = (dn1w, dn1b, din_w, din_b, dout_w, dout_b, dn2w, dn2b, dw1, db1, dw2, db2)
    return dx, dict(zip(BLOCK_PARAM_NAMES, grads))


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
