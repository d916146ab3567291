"""Your backward passes: the exercises of the minivit course.

Fill in each function below (replace `raise NotImplementedError` with your code), then

    minivit exercises check THIS_FILE                  # every exercise: right, wrong (with a hint) or not done
    minivit exercises check THIS_FILE linear_backward  # one exercise
    minivit train --layers THIS_FILE                   # once they pass: a ViT trained on your gradients

Each function has the engine's own name and signature (minivit/engine/layers.py,
transformer.py, loss.py, optim.py), so the engine calls yours in its place: the forward
passes stay the engine's, and each docstring says what the forward computed and what its
cache holds. The derivations are in docs/gradients.md (the section named in each
docstring; write your function before you read the engine's lines quoted there); the
exercises come in the order of that page, each one using the ones before. Each is graded
on its own: while one is checked, the others it calls are the engine's, so a mistake in
one fails that exercise alone. The last three are optional (the model's other options).

The rules of the pattern (CS231n's layers.py):
    out, cache = thing_forward(x, w, ...)       # the engine's; cache: what backward needs
    dx, dw, ... = thing_backward(dout, cache)   # yours: dL/d(input) for every input, in order
dout is dL/d(out) for some scalar loss L, an array of out's shape; each gradient you return
has its input's shape and dtype. Write array code against xp = array_module(some_array)
(NumPy on a CPU, CuPy on a GPU) where you create arrays; `x.sum(axis=-1, keepdims=True)`
keeps the axis so the result broadcasts back against x.

Shapes: B batch, C channels, H, W image side, p patch side, P patches, N = P + 1 tokens,
D width, h heads, d = D / h head width, F the MLP's hidden width, K classes, M all leading
axes flattened into rows.
"""

# what your code may use (the stubs themselves use none of it)
import math  # noqa: F401

import numpy as np  # noqa: F401

from minivit.engine.backend import array_module, erf, kernel  # noqa: F401
from minivit.engine.layers import (layernorm_forward, linear_forward, norm_backward,
                                   norm_forward, patch_embed_forward, patchify, softmax_forward,
                                   token_embed_forward, unpatchify)  # noqa: F401
from minivit.engine.loss import check_labels  # noqa: F401
from minivit.engine.transformer import (attention_forward, block_forward, head_forward,
                                        merge_heads, mlp_forward, pool_backward, sdpa_forward,
                                        split_heads)  # noqa: F401


# --------------------------------------------------------------------------- 1. linear

def linear_backward(dy, cache, need_dx=True):
    """The backward of linear_forward: y = x W^T + b over the last axis.

    dy [..., Dout].  cache.x2 [M, Din] (x with its leading axes flattened into M rows),
    cache.w [Dout, Din], cache.x_shape (x's shape, [..., Din]).
    Return (dx [..., Din], dw [Dout, Din], db [Dout]); with need_dx=False return None
    for dx (the model asks so for inputs no one trains).
    A parameter used by every row gets the sum of every row's gradient.
    docs/gradients.md section 1.
    """
    raise NotImplementedError


# --------------------------------------------------------------- 2. patch embedding

def patch_embed_backward(dy, cache, need_dx=True):
    """The backward of patch_embed_forward: a p x p conv with stride p, done as a linear
    layer on the flattened patches:  y = patchify(x, p) W_flat^T + b,
    W_flat = w.reshape(D, C*p*p).

    dy [B, P, D].  cache.linear (linear_forward's cache, on the patches [B, P, C*p*p]),
    cache.x_shape ([B, C, H, W]), cache.w_shape ([D, C, p, p]).
    Return (dx [B, C, H, W], dw [D, C, p, p], db [D]); dx None when need_dx=False.
    unpatchify(patches, image_shape, p) undoes patchify.
    docs/gradients.md section 2.
    """
    raise NotImplementedError


# ----------------------------------------- 3. class token and position embedding

def token_embed_backward(dy, cache):
    """The backward of token_embed_forward: the class token is put before the P patch
    tokens of every image, then the position embedding is added:
        y[:, 0] = cls_token + pos_embed[0],   y[:, 1:] = x + pos_embed[1:]

    dy [B, N, D]; the cache holds nothing.
    Return (dx [B, P, D], dcls_token [1, 1, D], dpos_embed [1, N, D]).
    docs/gradients.md section 3.
    """
    raise NotImplementedError


# ------------------------------------------------------------------------ 4. LayerNorm

def layernorm_backward(dy, cache):
    """The backward of layernorm_forward, over the last axis of x [..., D]:
        mu = mean(x),  var = mean((x - mu)^2),  r = 1 / sqrt(var + eps),
        xhat = (x - mu) r,  y = xhat w + b

    dy [..., D].  cache.xhat [..., D], cache.rstd (r, [..., 1]), cache.w [D].
    Return (dx [..., D], dw [D], db [D]). x reaches y through xhat directly, through mu
    and through r: each path adds a term.
    docs/gradients.md section 4.
    """
    raise NotImplementedError


# -------------------------------------------------------------------------- 5. softmax

def softmax_backward(da, cache):
    """The backward of softmax_forward, over the last axis:
        a_i = exp(s_i) / sum_j exp(s_j)

    da [..., N].  cache.a [..., N] (the softmax itself).
    Return ds [..., N] (one array: softmax has one input). Every a_i depends on every s_j.
    docs/gradients.md section 5.
    """
    raise NotImplementedError


# ----------------------------------------------- 6. scaled dot-product attention

def sdpa_backward(do, cache):
    """The backward of sdpa_forward, every head at once:
        s = q k^T / sqrt(d)    [B, h, Nq, N]
        a = softmax(s)         [B, h, Nq, N]
        o = a v                [B, h, Nq, d]

    do [B, h, Nq, d].  cache.q [B, h, Nq, d], cache.k and cache.v [B, h, N, d],
    cache.a [B, h, Nq, N], cache.softmax (softmax_forward's cache), cache.scale (1/sqrt(d)).
    Return (dq, dk, dv), each of its input's shape. For Z = X Y: dX = dZ Y^T, dY = X^T dZ
    (on the last two axes: t.transpose(0, 1, 3, 2)). Use your softmax_backward.
    docs/gradients.md section 6.
    """
    raise NotImplementedError


# --------------------------------------- 7. multi-head attention: the projections

def attention_backward(dy, cache):
    """The backward of attention_forward (laid out like torch.nn.MultiheadAttention):
        qkv = x W_in^T + b_in                     [B, N, 3D]  (q, k, v: columns 0:D, D:2D, 2D:3D)
        q, k, v = split_heads of each third       [B, h, N, d]
        o = sdpa(q, k, v)                         [B, h, N, d]
        y = merge_heads(o) W_out^T + b_out        [B, N, D]

    dy [B, N, D].  cache.linear_in, cache.sdpa, cache.linear_out (the caches of the two
    linear_forward calls and of sdpa_forward), cache.num_heads.
    Return (dx, din_proj_weight [3D, D], din_proj_bias [3D], dout_proj_weight [D, D],
    dout_proj_bias [D]). merge_heads undoes split_heads. Use your linear_backward and
    sdpa_backward.
    docs/gradients.md section 6b.
    """
    raise NotImplementedError


# ----------------------------------------------------------------------------- 8. GELU

def gelu_backward(dy, cache):
    """The backward of gelu_forward (exact GELU, as torch.nn.GELU()):
        y = x Phi(x),   Phi(x) = (1 + erf(x / sqrt 2)) / 2   (the standard normal CDF)

    dy [...].  cache.x, cache.cdf (Phi(x)), both of x's shape.
    Return dx (one array). The normal density is phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
    docs/gradients.md section 7.
    """
    raise NotImplementedError


# ------------------------------------------------------------------------------ 9. MLP

def mlp_backward(dy, cache):
    """The backward of mlp_forward: Linear -> GELU -> Linear,
        hid = x W1^T + b1   [..., F],   g = GELU(hid),   y = g W2^T + b2   [..., D]

    dy [..., D].  cache.linear1, cache.gelu, cache.linear2 (the three forwards' caches)
    and cache.gelu_backward (the backward of the GELU the forward used: call it as
    cache.gelu_backward(dg, cache.gelu)).
    Return (dx, dw1 [F, D], db1 [F], dw2 [D, F], db2 [D]). Use your linear_backward.
    docs/gradients.md section 8.
    """
    raise NotImplementedError


# ------------------------------------------------------------- 10. the residual block

def block_backward(dy, cache):
    """The backward of block_forward, a pre-norm transformer block:
        x1 = x + k1 attn(norm1(x))
        y  = x1 + k2 mlp(norm2(x1))
    k1, k2: stochastic depth's masks ([B, 1, 1], 0 for an image that skips the branch,
    else 1/(1 - rate)), or the number 1.0 without it.

    dy [B, N, D].  cache.norm1, cache.attn, cache.norm2, cache.mlp (the caches of
    norm_forward, attention_forward, norm_forward, mlp_forward), cache.k1, cache.k2.
    Return (dx [B, N, D], grads): grads a dict of every parameter's gradient by the
    block's names: "norm1.weight", "norm1.bias", "attn.in_proj_weight",
    "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias", "norm2.weight",
    "norm2.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias".
    norm_backward(dh, cache.norm1) returns (dx, {"norm1.weight": ..., "norm1.bias": ...}).
    Use your mlp_backward and attention_backward.
    docs/gradients.md section 9.
    """
    raise NotImplementedError


# --------------------------------------------------------------------- 11. the head

def head_backward(dlogits, cache):
    """The backward of head_forward: pool the tokens h [B, N, D], normalize, classify,
        pooled = pool(h)     [B, D]   (pool "cls": the class token's row, h[:, 0])
        z = norm(pooled)     [B, D]
        logits = z W^T + b   [B, K]

    dlogits [B, K].  cache.pool (pool_forward's cache), cache.norm (norm_forward's),
    cache.linear (linear_forward's).
    Return (dh [B, N, D], grads) with grads {"norm.weight", "norm.bias", "head.weight",
    "head.bias"} (and "attention_pool.weight" with pool "seq"). pool_backward(dpooled,
    cache.pool) returns (dh, dw) of the pooling (dw None but for pool "seq").
    Use your linear_backward.
    docs/gradients.md section 10.
    """
    raise NotImplementedError


# ------------------------------------- 12. softmax cross-entropy with label smoothing

def cross_entropy(logits, labels, label_smoothing=0.0):
    """The loss and its gradient at once (this one is forward and backward):

        p  = softmax(z) over the K classes of each row of z = logits [B, K]
        q  = (1 - ls) onehot(label) + ls / K          (ls = label_smoothing)
        loss = -(1/B) sum_b sum_k q_bk log p_bk       (the mean over the batch)

    labels: [B] integer classes, or soft targets [B, K] (rows of probabilities, as mixup
    makes: they take onehot's place). labels, soft = check_labels(logits, labels,
    label_smoothing) checks them and says which. Compute log p stably: with
    t = z - max z, log p = t - log sum exp t (exp never overflows). (docs/gradients.md
    writes the softmax's output a and the target theta.)
    Return (loss, dlogits): loss a number (a 0-d array is fine), dlogits [B, K].
    docs/gradients.md section 11.
    """
    raise NotImplementedError


# ------------------------------------------------------------------ 13. Adam and AdamW

@kernel
def adam_update(xp, w, g, m, v, decay, ok, step_size, one_minus_b1, one_minus_b2,
                bias_correction2_sqrt, eps):
    """One Adam step (torch.optim.Adam) on whole arrays, at step t = 1, 2, ...:
        g = g + decay w                    (Adam's weight decay: an L2 term in the gradient)
        m = b1 m + (1 - b1) g
        v = b2 v + (1 - b2) g^2
        w = w - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    w, g, m, v: arrays of one shape; update w, m and v IN PLACE (the optimizer keeps
    them) with +=, -= (the only in-place form a fused GPU kernel takes), and return w.
    decay: a number or an array of w's shape. ok: a 0-d bool array; when it is False the
    step must change nothing (write each change as xp.where(ok, change, 0.0)).
    The scalars come computed: step_size = lr / (1 - b1^t), one_minus_b1 = 1 - b1,
    one_minus_b2 = 1 - b2, bias_correction2_sqrt = sqrt(1 - b2^t), eps.
    Only elementwise arithmetic, xp ufuncs and xp.where (what a fused kernel compiles).
    docs/gradients.md section 13.
    """
    raise NotImplementedError


@kernel
def adamw_update(xp, w, g, m, v, decay, ok, step_size, one_minus_b1, one_minus_b2,
                 bias_correction2_sqrt, eps, lr):
    """One AdamW step (torch.optim.AdamW): the weight shrinks first, w = w (1 - lr decay),
    then the Adam step with the gradient as it is (no decay term in it).
    The arguments as adam_update's, plus lr. docs/gradients.md section 13.
    """
    raise NotImplementedError


# ------------------------------------------ more: the model's other options (optional)

def rmsnorm_backward(dy, cache):
    """The backward of rmsnorm_forward (--norm rmsnorm), over the last axis of x [..., D]:
        r = 1 / sqrt(mean(x^2) + eps),  xhat = x r,  y = xhat w

    dy [..., D].  cache.xhat, cache.rstd (r, [..., 1]), cache.w [D].
    Return (dx, dw [D]). docs/gradients.md section 4b.
    """
    raise NotImplementedError


def gelu_tanh_backward(dy, cache):
    """The backward of gelu_tanh_forward (--gelu tanh):
        y = x (1 + t) / 2,   t = tanh(u),   u = sqrt(2/pi) (x + 0.044715 x^3)

    dy [...].  cache.x, cache.t (t), both of x's shape. Return dx.
    docs/gradients.md section 7.
    """
    raise NotImplementedError


def conv2d_backward(dy, cache, need_dx=True):
    """The backward of conv2d_forward (the conv stem, --stem-channels): a k x k conv with
    stride s and zero padding pad, as a linear layer on every window (im2col):
        cols[b, (ho, wo), (c, i, j)] = xpad[b, c, s ho + i, s wo + j]
        y = cols W_flat^T + b   (W_flat = w.reshape(Co, C k k)), as [B, Co, Ho, Wo]

    dy [B, Co, Ho, Wo].  cache.linear (linear_forward's cache on cols [B, Ho Wo, C k k]),
    cache.x_shape ([B, C, H, W]), cache.w_shape ([Co, C, k, k]), cache.stride,
    cache.padding. Return (dx [B, C, H, W], dw [Co, C, k, k], db [Co]); dx None when
    need_dx=False. Windows overlap when k > s: their gradients add up.
    docs/gradients.md section 2b.
    """
    raise NotImplementedError
