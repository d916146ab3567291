"""The Vision Transformer: the layers of layers.py put together, forward and backward.

    image [B, C, H, W]
      -> patch_embed   (conv p x p, stride p)          [B, P, D]
      -> vit_embed     (class token, position embed)   [B, N, D]
      -> blocks.0 .. blocks.{depth-1}  (pre-norm)      [B, N, D]
      -> norm          (on the class token)            [B, D]
      -> head          (linear)                        [B, num_classes]

Parameter names and shapes are those of the PyTorch SimpleViT this engine reproduces,
so a state_dict moves between the two without renaming.
"""

import numpy as np

from . import layers
from .backend import (array_module, backend_name, can_split, cpu_threads, get_xp,
                      parallel_map, to_device, to_host)

DTYPES = ("float32", "float64")
POOLS = ("cls", "mean")


class Param:
    """One learnable tensor: its name, its values and its gradient (same shape).

    ``data`` and ``grad`` are views into the model's two flat buffers, so an optimizer
    updating ``data`` in place updates the model, and one ``fill(0)`` clears every grad.
    """

    __slots__ = ("name", "data", "grad")

    def __init__(self, name, data, grad):
        self.name, self.data, self.grad = name, data, grad

    def __repr__(self):
        return f"Param({self.name!r}, shape={tuple(self.data.shape)})"


def trunc_normal(rng, shape, std=0.02):
    """Normal(0, std) samples, redrawn until all lie within 2 std (as timm's trunc_normal_)."""
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out * std


class ViT:
    """A Vision Transformer with hand-written backward passes.

    Arguments mirror the reference SimpleViT: img_size, patch_size, in_chans, embed_dim,
    depth, num_heads, mlp_ratio (MLP hidden width = int(embed_dim * mlp_ratio)) and
    num_classes; plus dtype ("float32" or "float64"), backend ("numpy", "cupy", "auto",
    or None for the MINIVIT_BACKEND environment variable, else "numpy"), seed (the
    initial weights depend only on it, whatever the backend), gelu ("exact" or "tanh")
    drop_path (stochastic depth: the largest rate, reached by the last block; block l
    drops each branch with rate drop_path * l / (depth - 1), when forward gets an rng) and
    pool: "cls" (the head reads the class token, as the reference) or "mean" (the head
    reads the mean of the patch tokens; the class token still takes part in attention).
    threads (NumPy only, not part of the saved configuration): how many shards of each
    batch run at once on the CPU; None: the MINIVIT_THREADS environment variable, else
    every CPU this process may use; 1 turns it off.

    Initialization: every linear and conv weight, the class token and the position
    embedding are drawn from a normal with std 0.02 truncated at 2 std; biases are 0;
    LayerNorm weights 1 and biases 0.
    """

    def __init__(self, img_size=32, patch_size=4, in_chans=3, embed_dim=192, depth=6,
                 num_heads=3, mlp_ratio=4.0, num_classes=10, dtype="float32",
                 backend=None, seed=0, gelu="exact", drop_path=0.0, pool="cls", threads=None):
        for name, value in (("img_size", img_size), ("patch_size", patch_size),
                            ("in_chans", in_chans), ("embed_dim", embed_dim), ("depth", depth),
                            ("num_heads", num_heads), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}: "
                             f"choose a patch size that divides the image size (e.g. 4 for 32)")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}: "
                             f"each head gets embed_dim / num_heads channels")
        if not mlp_ratio > 0 or int(embed_dim * mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio!r}")
        if str(dtype) not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path!r}")
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}: use one of {', '.join(POOLS)}")
        if gelu not in layers.GELU_KINDS:
            raise ValueError(f"unknown gelu {gelu!r}: use one of {', '.join(layers.GELU_KINDS)}")

        self.xp = get_xp(backend)
        self.backend = backend_name(self.xp)
        self.dtype = self.xp.dtype(str(dtype))
        self.config = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                           embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                           mlp_ratio=mlp_ratio, num_classes=num_classes, dtype=str(dtype),
                           gelu=gelu, drop_path=float(drop_path), pool=pool)
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.embed_dim, self.depth, self.num_heads = embed_dim, depth, num_heads
        self.num_classes, self.gelu, self.drop_path = num_classes, gelu, float(drop_path)
        self.pool = pool
        self.num_patches = (img_size // patch_size) ** 2
        self._init_params(seed)
        self._cache = None
        self._shard_grads = []          # per-shard gradient buffers (see backward)
        self.threads = threads

    @property
    def threads(self):
        """How many shards each batch is cut into and run at once (NumPy only; 1 on CuPy,
        whose kernels already use the whole GPU)."""
        return self._threads

    @threads.setter
    def threads(self, value):
        if value is None:
            value = cpu_threads() if self.xp is np and can_split() else 1
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"threads must be a positive integer or None, got {value!r}")
        self._threads = int(value) if self.xp is np else 1

    # ------------------------------------------------------------------ parameters

    def param_shapes(self):
        """{name: shape} in the PyTorch SimpleViT's state_dict order."""
        D, C, p = self.embed_dim, self.in_chans, self.patch_size
        F = int(D * self.config["mlp_ratio"])
        shapes = {
            "patch_embed.proj.weight": (D, C, p, p),
            "patch_embed.proj.bias": (D,),
            "vit_embed.cls_token": (1, 1, D),
            "vit_embed.pos_embed": (1, self.num_patches + 1, D),
        }
        block = {
            "norm1.weight": (D,), "norm1.bias": (D,),
            "attn.in_proj_weight": (3 * D, D), "attn.in_proj_bias": (3 * D,),
            "attn.out_proj.weight": (D, D), "attn.out_proj.bias": (D,),
            "norm2.weight": (D,), "norm2.bias": (D,),
            "mlp.0.weight": (F, D), "mlp.0.bias": (F,),
            "mlp.2.weight": (D, F), "mlp.2.bias": (D,),
        }
        for i in range(self.depth):
            for name in layers.BLOCK_PARAM_NAMES:
                shapes[f"blocks.{i}.{name}"] = block[name]
        shapes.update({"norm.weight": (D,), "norm.bias": (D,),
                       "head.weight": (self.num_classes, D), "head.bias": (self.num_classes,)})
        return shapes

    def _init_params(self, seed):
        """Draw the initial weights on the host (same seed -> same weights on any
        backend), then lay every parameter and gradient out in two flat buffers."""
        rng = np.random.default_rng(seed)
        shapes = self.param_shapes()
        host = {}
        for name, shape in shapes.items():
            if name.endswith(("norm1.weight", "norm2.weight")) or name == "norm.weight":
                host[name] = np.ones(shape)
            elif name.endswith("bias"):
                host[name] = np.zeros(shape)
            else:  # linear / conv weights, class token, position embedding
                host[name] = trunc_normal(rng, shape)
        total = sum(int(np.prod(s)) for s in shapes.values())
        self.flat_params = self.xp.empty(total, dtype=self.dtype)
        self.flat_grads = self.xp.zeros(total, dtype=self.dtype)
        self.params = self._views(self.flat_params)
        self._grads = self._views(self.flat_grads)
        for name, data in self.params.items():
            data[...] = to_device(host[name], self.xp, self.dtype)
        self._param_list = [Param(name, self.params[name], self._grads[name]) for name in shapes]

    def _views(self, flat):
        """{name: view} of a flat buffer laid out like the parameters (state_dict order)."""
        views, offset = {}, 0
        for name, shape in self.param_shapes().items():
            n = int(np.prod(shape))
            views[name] = flat[offset:offset + n].reshape(shape)
            offset += n
        return views

    def parameters(self):
        """The list of Param (name, data, grad), in state_dict order, for an optimizer."""
        return list(self._param_list)

    def num_parameters(self):
        return int(self.flat_params.size)

    def state_dict(self):
        """{name: array}: the live parameters (optimizer steps show in them); copy or
        to_host them to keep a snapshot."""
        return dict(self.params)

    def grads(self):
        """{name: array}: the accumulated gradients, same names and shapes as state_dict."""
        return dict(self._grads)

    def zero_grad(self):
        self.flat_grads.fill(0)

    def load_state_dict(self, state):
        """Copy weights in (NumPy, CuPy or anything np.asarray accepts, e.g. CPU torch
        tensors). Missing, unexpected or mis-shaped names are all reported at once."""
        shapes = self.param_shapes()
        missing = [k for k in shapes if k not in state]
        unexpected = [k for k in state if k not in shapes]
        wrong = [f"{k}: expected {shapes[k]}, got {tuple(np.shape(state[k]))}"
                 for k in shapes if k in state and tuple(np.shape(state[k])) != shapes[k]]
        if missing or unexpected or wrong:
            parts = []
            if missing:
                parts.append("missing keys: " + ", ".join(missing))
            if unexpected:
                parts.append("unexpected keys: " + ", ".join(unexpected))
            if wrong:
                parts.append("shape mismatches: " + "; ".join(wrong))
            raise ValueError("state_dict does not match this model (" + " | ".join(parts)
                             + "). Build the ViT with the configuration the weights came from.")
        for name in shapes:
            value = state[name]
            if array_module(value) is not self.xp:
                value = to_device(to_host(value), self.xp)
            self.params[name][...] = value.astype(self.dtype, copy=False)

    def _drop_path_masks(self, i, batch, rng):
        """Stochastic depth masks (k1, k2) [B, 1, 1] for block i, or None: each image keeps
        a branch with probability 1 - rate, scaled by 1/(1 - rate) so the expected output
        is unchanged."""
        rate = self.drop_path * i / max(1, self.depth - 1)
        if rng is None or rate == 0.0:
            return None
        kept = rng.random((2, batch)) >= rate
        masks = to_device(kept / (1.0 - rate), self.xp, self.dtype)
        return masks[0][:, None, None], masks[1][:, None, None]

    def _block_params(self, i):
        prefix = f"blocks.{i}."
        return {name: self.params[prefix + name] for name in layers.BLOCK_PARAM_NAMES}

    # ------------------------------------------------------------ forward / backward

    def forward(self, x, keep_cache=True, rng=None):
        """x [B, C, H, W] (normalized floats) -> logits [B, num_classes].

        Keeps what backward needs unless keep_cache is False (evaluation: each block's
        activations are then freed as soon as the next block has run). The input is cast
        to the model's dtype. rng (a NumPy Generator) turns on stochastic depth when the
        model has drop_path > 0 (training); without it the forward is deterministic.

        On NumPy the batch is cut into self.threads shards run at once (see
        backend.parallel_map); every image's logits are the same either way."""
        return self._forward(x, keep_cache, rng, every_token=False)

    def _forward(self, x, keep_cache, rng, every_token):
        x = self._check_images(x)
        masks = [self._drop_path_masks(i, len(x), rng) for i in range(self.depth)]
        shards = self._shards(len(x))

        def run(s):
            shard_masks = [None if m is None else (m[0][s], m[1][s]) for m in masks]
            return self._forward_shard(x[s], shard_masks, keep_cache, every_token)

        results = parallel_map(run, shards)
        logits = results[0][0] if len(results) == 1 else self.xp.concatenate([r[0] for r in results])
        self._cache = (shards, [r[1] for r in results]) if keep_cache else None
        return logits

    def _forward_shard(self, x, masks, keep_cache, every_token):
        """The forward of the network on one shard of the batch: (logits, cache).

        When the head reads the class token, nothing else of the last block's output
        reaches the logits, so that block computes only the class token's row (see
        layers.block_forward, cls_only) unless every_token asks for all of it."""
        p = self.params
        h, c_patch = layers.patch_embed_forward(
            x, p["patch_embed.proj.weight"], p["patch_embed.proj.bias"])       # [B, P, D]
        h, c_embed = layers.token_embed_forward(
            h, p["vit_embed.cls_token"], p["vit_embed.pos_embed"])            # [B, N, D]
        c_blocks = []
        for i in range(self.depth):
            cls_only = i == self.depth - 1 and self.pool == "cls" and not every_token
            h, c = layers.block_forward(h, self._block_params(i), self.num_heads, self.gelu,
                                        masks[i], cls_only)
            if keep_cache:
                c_blocks.append(c)                                            # [B, N, D]
        # The final LayerNorm works token by token and only the class token reaches the
        # head, so normalizing just that token gives the same logits and gradients (h is
        # [B, 1, D] here unless every_token). pool="mean" instead normalizes the mean of
        # the patch tokens.
        pooled = h[:, 0] if self.pool == "cls" else h[:, 1:].mean(axis=1)       # [B, D]
        z, c_norm = layers.layernorm_forward(pooled, p["norm.weight"], p["norm.bias"])  # [B, D]
        logits, c_head = layers.linear_forward(z, p["head.weight"], p["head.bias"])       # [B, K]
        cache = (h.shape, c_patch, c_embed, c_blocks, c_norm, c_head) if keep_cache else None
        return logits, cache

    def _shards(self, batch):
        """Slices cutting a batch into min(threads, batch) nearly equal shards."""
        n = min(self.threads, batch)
        bounds = [batch * k // n for k in range(n + 1)]
        return [slice(bounds[k], bounds[k + 1]) for k in range(n)]

    __call__ = forward

    def _check_images(self, x):
        """Validate a batch of images and cast it to the model's dtype and backend, or
        raise an error that names the problem and the fix."""
        xp, C, S = self.xp, self.in_chans, self.img_size
        if xp is np and hasattr(x, "__cuda_array_interface__"):
            raise TypeError("a CuPy (GPU) array was given to a NumPy model: move it with "
                            "minivit.to_host(x), or build the model with backend='cupy'")
        if array_module(x) is np and not isinstance(x, np.ndarray):
            x = np.asarray(x)                 # lists and other array-likes
        shape = tuple(getattr(x, "shape", np.shape(x)))
        expected = f"[B, {C}, {S}, {S}]"
        if len(shape) != 4:
            raise ValueError(f"images must have shape {expected} (batch, channels, height, width), "
                             f"got {shape}; add a batch axis with x[None] for one image")
        if shape[0] == 0:
            raise ValueError(f"empty batch: images have shape {shape}; pass at least one image")
        if shape[1] != C:
            hint = " (channels last? use x.transpose(0, 3, 1, 2))" if shape[3] == C else ""
            raise ValueError(f"images have {shape[1]} channels, the model expects {C}: shape "
                             f"{shape}, expected {expected}{hint}")
        if shape[2:] != (S, S):
            raise ValueError(f"images are {shape[2]}x{shape[3]}, the model expects {S}x{S}: resize "
                             f"them, or build the ViT with img_size={shape[2]} (square images)")
        dtype = np.dtype(getattr(x, "dtype", np.float64))
        if dtype == np.uint8:
            raise TypeError("images are uint8 (raw 0..255 pixels): normalize them to floats first, "
                            "e.g. minivit.data.normalize(x, mean, std)")
        if dtype.kind not in "f":
            raise TypeError(f"images must be floating point, got {dtype}: convert and normalize "
                            f"them first, e.g. minivit.data.normalize(x, mean, std)")
        x = xp.asarray(x, dtype=self.dtype)   # a NumPy batch is copied to the GPU for CuPy
        if not bool(xp.isfinite(x).all()):
            raise ValueError("images contain NaN or Inf values: check the data and its "
                             "normalization (a zero std divides by zero)")
        return x

    def backward(self, dlogits):
        """Back-propagate dL/dlogits [B, num_classes] from the last forward; adds every
        parameter's gradient into grads() (call zero_grad() between steps) and returns
        dL/dx [B, C, H, W]."""
        if self._cache is None:
            raise RuntimeError("backward() called without a forward() since the last backward: "
                               "run logits = model.forward(x) first")
        shards, caches = self._cache
        expected = (shards[-1].stop, self.num_classes)
        if tuple(np.shape(dlogits)) != expected:
            raise ValueError(f"dlogits must have the logits' shape {expected}, got "
                             f"{tuple(np.shape(dlogits))}")
        self._cache = None  # free the activations; a second backward needs a new forward
        dlogits = self.xp.asarray(dlogits, dtype=self.dtype)
        # shard 0 adds into the model's gradients, shard k > 0 into its own buffer, summed
        # after in a fixed order (so a run is bitwise repeatable)
        buffers = [self._grads] + [self._shard_grad_buffer(k) for k in range(1, len(shards))]

        def run(k):
            if k > 0:
                self._shard_grads[k - 1][0].fill(0)
            return self._backward_shard(dlogits[shards[k]], caches[k], buffers[k])

        dxs = parallel_map(run, range(len(shards)))
        for k in range(1, len(shards)):
            self.flat_grads += self._shard_grads[k - 1][0]
        return dxs[0] if len(dxs) == 1 else self.xp.concatenate(dxs)

    def _shard_grad_buffer(self, k):
        """The gradient dict of shard k > 0: views into a flat buffer kept between steps."""
        while len(self._shard_grads) < k:
            flat = self.xp.zeros_like(self.flat_grads)
            self._shard_grads.append((flat, self._views(flat)))
        return self._shard_grads[k - 1][1]

    def _backward_shard(self, dlogits, cache, g):
        """The backward of one shard: adds its parameter gradients into the dict g of
        views and returns dL/dx for its images."""
        h_shape, c_patch, c_embed, c_blocks, c_norm, c_head = cache
        dz, dw, db = layers.linear_backward(dlogits, c_head)
        g["head.weight"] += dw
        g["head.bias"] += db
        dcls, dw, db = layers.layernorm_backward(dz, c_norm)
        g["norm.weight"] += dw
        g["norm.bias"] += db
        dh = self.xp.zeros(h_shape, dtype=self.dtype)                           # [B, N, D], or [B, 1, D]
        if self.pool == "cls":
            dh[:, 0] = dcls
        else:                     # a mean over P tokens: each receives 1/P of the gradient
            dh[:, 1:] = dcls[:, None, :] / (h_shape[1] - 1)
        for i in reversed(range(self.depth)):
            dh, block_grads = layers.block_backward(dh, c_blocks[i])
            c_blocks[i] = None    # this block's activations are no longer needed
            for name, grad in block_grads.items():
                g[f"blocks.{i}.{name}"] += grad
        dh, dcls_token, dpos = layers.token_embed_backward(dh, c_embed)
        g["vit_embed.cls_token"] += dcls_token
        g["vit_embed.pos_embed"] += dpos
        dx, dw, db = layers.patch_embed_backward(dh, c_patch)
        g["patch_embed.proj.weight"] += dw
        g["patch_embed.proj.bias"] += db
        return dx

    def attention(self, x):
        """x [B, C, H, W] -> (logits, [a_0, ..., a_{depth-1}]), a_l [B, heads, N, N] the
        attention probabilities of block l (row i: how token i attends to every token;
        token 0 is the class token). Nothing is kept for backward."""
        logits = self._forward(x, keep_cache=True, rng=None, every_token=True)
        caches = self._cache[1]
        self._cache = None
        maps = [self.xp.concatenate([layers.block_attention(c[3][i]) for c in caches])
                for i in range(self.depth)]
        return logits, maps

    def __repr__(self):
        return (f"ViT({', '.join(f'{k}={v!r}' for k, v in self.config.items())}, "
                f"backend={self.backend!r}, params={self.num_parameters():,})")
