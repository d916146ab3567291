"""Every layer of the ViT as a forward/backward pair: the reference path.

The pattern (as in CS231n's layers.py):

    out, cache = thing_forward(x, params...)     # cache: what backward needs, by name
    dx, dparams... = thing_backward(dout, cache)  # gradient of every input, in order

``dout`` is dL/d(out) for some scalar loss L; each backward returns dL/d(input) for
every array input of its forward, in the order the forward takes them. Each backward
sits right under its forward with the derivation in its docstring (docs/gradients.md
derives them at length). The code is written once against ``xp`` (NumPy or CuPy,
whichever owns the input), so it runs on both.

This file holds the layers; transformer.py builds attention, the MLP, the block and the
head from them, and resize.py the area resizing of progressive resizing. This is the math
as a student would write it: the fast path (minivit/fast/) computes the same numbers in
fewer operations and is checked against these functions.

Shapes: B batch, C channels, H/W image height/width, p patch size, P = (H/p)(W/p)
patches, N = P + 1 tokens (the class token first), D embedding width, F hidden width of
the MLP.
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


def patch_embed_backward(dy, cache, need_dx=True):
    """The linear backward on the patches, then every patch gradient put back in its
    place in the image (patches do not overlap, so nothing is summed):

        dpatches, dW_flat, db = linear_backward(dy)
        dx = unpatchify(dpatches),   dw = dW_flat.reshape(D, C, p, p)

    need_dx=False (the images of a training step need no gradient): dx is None.
    """
    dpatches, dw, db = linear_backward(dy, cache.linear, need_dx)  # [B, P, C*p*p], [D, C*p*p], [D]
    if not need_dx:
        return None, dw.reshape(cache.w_shape), db
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


def rmsnorm_forward(x, w, eps=1e-5):
    """RMSNorm (Zhang & Sennrich; torch.nn.RMSNorm): LayerNorm without the mean and the bias.

    x [..., D], w [D]:  r = 1/sqrt(mean(x^2) + eps),  xhat = x r,  y = xhat w.
    """
    xp = array_module(x)
    rstd = 1.0 / xp.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)  # [..., 1]
    xhat = x * rstd                                                   # [..., D]
    return xhat * w, Cache(xhat=xhat, rstd=rstd, w=w)


def rmsnorm_backward(dy, cache):
    """With g = dy * w and xhat = x r, r = (mean(x^2) + eps)^(-1/2):
    dxhat_i/dx_j = r delta_ij + x_i dr/dx_j and dr/dx_j = -r^3 x_j / D, so

        dx = r (g - xhat mean(g xhat))     (the mean over the last axis)
        dw = sum(dy xhat)                  (summed over every row)

    LayerNorm's backward without the path through the mean.
    """
    xhat, rstd, w = cache.xhat, cache.rstd, cache.w
    D = w.shape[0]
    dw = (dy * xhat).reshape(-1, D).sum(axis=0)                 # [D]
    g = dy * w                                                  # [..., D]
    dx = rstd * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, dw


def norm_forward(x, p, name, kind="layernorm"):
    """The model's normalization (its `norm` setting) of x [..., D], with the parameters
    named name.weight (and name.bias for LayerNorm) in the dict p -> (y, cache)."""
    if kind == "rmsnorm":
        y, cache = rmsnorm_forward(x, p[name + ".weight"])
    else:
        y, cache = layernorm_forward(x, p[name + ".weight"], p[name + ".bias"])
    return y, Cache(kind=kind, name=name, norm=cache)


def norm_backward(dy, cache):
    """-> (dx, {parameter name: gradient}) of norm_forward."""
    if cache.kind == "rmsnorm":
        dx, dw = rmsnorm_backward(dy, cache.norm)
        return dx, {cache.name + ".weight": dw}
    dx, dw, db = layernorm_backward(dy, cache.norm)
    return dx, {cache.name + ".weight": dw, cache.name + ".bias": db}


def norm_param_shapes(name, D, kind="layernorm"):
    """{name: shape} of one normalization's parameters (RMSNorm has no bias)."""
    shapes = {name + ".weight": (D,)}
    if kind != "rmsnorm":
        shapes[name + ".bias"] = (D,)
    return shapes


# the model's `norm` setting -> its (forward, backward) pair
NORMS = {"layernorm": (layernorm_forward, layernorm_backward),
         "rmsnorm": (rmsnorm_forward, rmsnorm_backward)}


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

# the tanh approximation's constants, here once (the fast path imports them)
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
