"""The Vision Transformer: the layers of layers.py put together, forward and backward.

    image [B, C, H, W]
      -> stem          (optional: 3x3 convs + GELU)    [B, S, H/r, W/r]
      -> patch_embed   (conv p x p, stride p)          [B, P, D]
      -> vit_embed     (class token, position embed)   [B, N, D]
      -> blocks.0 .. blocks.{depth-1}  (pre-norm)      [B, N, D]
      -> pool          (class token, mean, or seq)     [B, D]
      -> norm, head    (LayerNorm or RMSNorm, linear)  [B, num_classes]

Parameter names and shapes are those of the PyTorch SimpleViT this engine reproduces,
so a state_dict moves between the two without renaming (the options SimpleViT lacks add
parameters of their own: the stem's convs, sequence pooling's attention_pool.weight).

    model = ViT(ViTConfig(embed_dim=192, depth=6, num_heads=3))   # or ViT(embed_dim=...)
    logits = model.forward(images)                                # keeps what backward needs
    dx = model.backward(dlogits)                                  # adds into model.grads()

A training step's random draws (stochastic depth's masks) come in a StepDraws (draws.py).
"""

import dataclasses
from types import SimpleNamespace as Cache

import numpy as np

from . import layers, resize, transformer
from .backend import array_module, backend_name, get_xp, to_device, to_host
from .config import ViTConfig
from .draws import StepDraws


class Param:
    """One learnable tensor: its name, its values and its gradient (same shape).

    ``data`` and ``grad`` are views into the model's two flat buffers, so an optimizer
    updating ``data`` in place updates the model, and one ``fill(0)`` clears every grad.
    """

    __slots__ = ("name", "data", "grad", "owner", "offset")

    def __init__(self, name, data, grad, owner=None, offset=0):
        self.name, self.data, self.grad = name, data, grad
        self.owner, self.offset = owner, offset     # the model whose flat buffers hold it

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

    ViT(config) or ViT(**fields of ViTConfig); plus backend ("numpy", "cupy", "auto", or
    None for the MINIVIT_BACKEND environment variable, else "numpy") and seed (the
    initial weights depend only on it, whatever the backend).

    Initialization: every linear and conv weight, the class token and the position
    embedding are drawn from a normal with std 0.02 truncated at 2 std (the stem's convs:
    std 1/sqrt(fan in)); biases are 0; LayerNorm weights 1 and biases 0.
    """

    def __init__(self, config=None, *, backend=None, seed=0, **fields):
        # fields given beside a config override it; everything below reads self.config
        base = ViTConfig() if config is None else config.model_config()
        self.config = dataclasses.replace(base, **fields).validate()
        self.xp = get_xp(backend)
        self.backend = backend_name(self.xp)
        self.dtype = self.xp.dtype(self.config.dtype)
        self._init_params(seed)
        self._cache = None

    # ------------------------------------------------------------------ parameters

    def param_shapes(self):
        """{name: shape} in the PyTorch SimpleViT's state_dict order: the parameter layout,
        which the fast path shares."""
        c = self.config
        D, F, K = c.embed_dim, c.hidden, c.num_classes
        block = transformer.block_param_shapes(D, F, c.norm)
        shapes = {}
        for name, c_in, c_out, _ in c.stem_convs:
            shapes.update({f"{name}.weight": (c_out, c_in, 3, 3), f"{name}.bias": (c_out,)})
        shapes.update({
            "patch_embed.proj.weight": (D, c.patch_in_chans, c.patch_size, c.patch_size),
            "patch_embed.proj.bias": (D,),
            "vit_embed.cls_token": (1, 1, D),
            "vit_embed.pos_embed": (1, c.num_patches + 1, D),
        })
        for i in range(c.depth):
            shapes.update({f"blocks.{i}.{name}": shape for name, shape in block.items()})
        shapes.update(transformer.head_param_shapes(D, K, c.pool, c.norm))
        return shapes

    def _init_params(self, seed):
        """Draw the initial weights on the host (same seed -> same weights on any
        backend), then lay every parameter and gradient out in two flat buffers."""
        rng = np.random.default_rng(seed)
        shapes = self.param_shapes()
        host = []
        for name, shape in shapes.items():
            if name.endswith(("norm1.weight", "norm2.weight")) or name == "norm.weight":
                host.append(np.ones(shape))
            elif name.endswith("bias"):
                host.append(np.zeros(shape))
            elif name.startswith("stem."):     # LeCun normal: unit-scale features for the GELU
                host.append(trunc_normal(rng, shape, std=1.0 / np.sqrt(np.prod(shape[1:]))))
            else:  # linear / conv weights, class token, position embedding
                host.append(trunc_normal(rng, shape))
        flat = np.concatenate([h.reshape(-1) for h in host])
        self.flat_params = to_device(flat, self.xp, self.dtype)     # one host -> device copy
        self.flat_grads = self.xp.zeros_like(self.flat_params)
        self.params = self.views(self.flat_params)
        self._grads = self.views(self.flat_grads)
        offsets = np.cumsum([0] + [int(np.prod(s)) for s in shapes.values()])
        self._param_list = [Param(name, self.params[name], self._grads[name], self, int(offset))
                            for name, offset in zip(shapes, offsets)]

    def views(self, flat):
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

    def block_params(self, i):
        """{name of transformer.block_param_shapes: array} of block i."""
        return transformer.block_params(self.params, i)

    # ------------------------------------------------------------ forward / backward

    def forward(self, x, keep_cache=True, draws=None):
        """x [B, C, H, W] (normalized floats) -> logits [B, num_classes].

        Keeps what backward needs unless keep_cache is False (evaluation). The input is
        cast to the model's dtype. draws: a training step's random draws (StepDraws:
        stochastic depth's masks); without them the forward is deterministic."""
        x = self.check_images(x)
        logits, cache = self.forward_pass(x, draws or StepDraws.none(self.config.depth), keep_cache)
        self._cache = cache
        return logits

    __call__ = forward

    def backward(self, dlogits, need_dx=True):
        """Back-propagate dL/dlogits [B, num_classes] from the last forward; adds every
        parameter's gradient into grads() (call zero_grad() between steps) and returns
        dL/dx [B, C, H, W] (None with need_dx=False: training needs no image gradient)."""
        if self._cache is None:
            raise RuntimeError("backward() called without a forward() since the last backward: "
                               "run logits = model.forward(x) first")
        cache, self._cache = self._cache, None     # a second backward needs a new forward
        dlogits = self.check_dlogits(dlogits, cache.batch)
        return self.backward_pass(dlogits, cache, need_dx)

    def forward_pass(self, x, draws, keep_cache=True):
        """The network on a checked batch: (logits, cache)."""
        c, p = self.config, self.params
        h, c_embed = self.embed_forward(x)                                    # [B, N, D]
        c_blocks = []
        for i in range(c.depth):
            h, cache = transformer.block_forward(h, self.block_params(i), c.num_heads, c.gelu,
                                                 draws.drop_path[i], c.norm)  # [B, N, D]
            c_blocks.append(cache if keep_cache else None)
        logits, c_head = transformer.head_forward(h, p, c.pool, c.norm)       # [B, K]
        if not keep_cache:
            return logits, None
        return logits, Cache(batch=len(x), embed=c_embed, blocks=c_blocks, head=c_head)

    def backward_pass(self, dlogits, cache, need_dx=True):
        """The backward of forward_pass: adds every parameter gradient into grads() and
        returns dL/dx (or None)."""
        grads = self._grads
        dh, head_grads = transformer.head_backward(dlogits, cache.head)       # [B, N, D]
        for name, g in head_grads.items():
            grads[name] += g
        for i in reversed(range(self.config.depth)):
            dh, block_grads = transformer.block_backward(dh, cache.blocks[i])
            for name, g in block_grads.items():
                grads[f"blocks.{i}.{name}"] += g
        return self.embed_backward(dh, cache.embed, need_dx)                  # [B, C, H, W]

    def embed_forward(self, x):
        """The stem (if any), the patch embedding, then the class token and position
        embedding: [B, N, D]."""
        p, c = self.params, self.config
        x, c_stem = self.stem_forward(x)                                      # [B, S, H/r, W/r]
        h, c_patch = layers.patch_embed_forward(
            x, p["patch_embed.proj.weight"], p["patch_embed.proj.bias"])       # [B, P, D]
        pos, c_pos = resize.pos_embed_for_grid(p["vit_embed.pos_embed"],
                                               x.shape[-1] // c.patch_size)  # [1, N, D]
        h, c_tok = layers.token_embed_forward(h, p["vit_embed.cls_token"], pos)  # [B, N, D]
        return h, Cache(stem=c_stem, patch=c_patch, token=c_tok, pos=c_pos)

    def embed_backward(self, dh, cache, need_dx=True):
        """The backward of embed_forward: adds its parameters' gradients -> dL/dx (None
        with need_dx=False; a stem still needs the patch embedding's input gradient)."""
        grads = self._grads
        dh, dcls, dpos = layers.token_embed_backward(dh, cache.token)
        grads["vit_embed.cls_token"] += dcls
        grads["vit_embed.pos_embed"] += dpos if cache.pos is None else \
            resize.pos_embed_resize_backward(dpos, cache.pos)
        dx, dw, db = layers.patch_embed_backward(dh, cache.patch, need_dx or bool(cache.stem))
        grads["patch_embed.proj.weight"] += dw
        grads["patch_embed.proj.bias"] += db
        return self.stem_backward(dx, cache.stem, need_dx)

    def stem_forward(self, x):
        """The stem's convs, each 3x3 and followed by a GELU: x [B, C, H, W] ->
        ([B, S, H/r, W/r], their caches); no stem: (x, [])."""
        p = self.params
        gelu = layers.GELUS[self.config.gelu][0]
        caches = []
        for name, _, _, stride in self.config.stem_convs:
            x, c_conv = layers.conv2d_forward(x, p[f"{name}.weight"], p[f"{name}.bias"],
                                              stride=stride, padding=1)      # [B, S, H/s, W/s]
            x, c_gelu = gelu(x)
            caches.append(Cache(name=name, conv=c_conv, gelu=c_gelu))
        return x, caches

    def stem_backward(self, dx, caches, need_dx=True):
        """The backward of stem_forward: adds the convs' gradients -> dL/dx [B, C, H, W]
        (need_dx=False: the first conv skips its input's gradient, and dx is None)."""
        gelu_backward = layers.GELUS[self.config.gelu][1]
        for i, c in reversed(list(enumerate(caches))):
            dx, dw, db = layers.conv2d_backward(gelu_backward(dx, c.gelu), c.conv,
                                                need_dx=need_dx or i > 0)
            self._grads[f"{c.name}.weight"] += dw
            self._grads[f"{c.name}.bias"] += db
        return dx

    def attention(self, x):
        """x [B, C, H, W] -> (logits, [a_0, ..., a_{depth-1}], readout): a_l [B, heads, N, N]
        the attention probabilities of block l (row i: how token i attends to every token;
        token 0 is the class token); readout [B, P] the weight the head gives each patch
        token's output (None when it reads the class token: pool "cls"; 1/P each for
        "mean"; the learned softmax for "seq"). Nothing is kept for backward."""
        x = self.check_images(x)
        logits, cache = self.forward_pass(x, StepDraws.none(self.config.depth))
        pool = cache.head.pool
        if pool.pool == "cls":
            readout = None
        elif pool.pool == "mean":
            P = pool.h_shape[1] - 1
            readout = self.xp.full((len(x), P), 1.0 / P, dtype=self.dtype)   # [B, P]
        else:
            readout = pool.softmax.a                                          # [B, P]
        return logits, [c.attn.sdpa.a for c in cache.blocks], readout

    # ------------------------------------------------------------------ input checks

    def check_images(self, x):
        """Validate a batch of images and cast it to the model's dtype and backend, or
        raise an error that names the problem and the fix."""
        xp, C, S = self.xp, self.config.in_chans, self.config.img_size
        if xp is np and hasattr(x, "__cuda_array_interface__"):
            raise TypeError("a CuPy (GPU) array was given to a NumPy model: move it with "
                            "minivit.to_host(x), or build the model with backend='cupy'")
        on_host = array_module(x) is np
        if on_host and not isinstance(x, np.ndarray):
            x = np.asarray(x)                 # lists and other array-likes
        shape = tuple(x.shape)
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
        if shape[2:] != (S, S) and not (shape[2] == shape[3] and self.config.takes_side(shape[2])):
            k = self.config.side_unit
            raise ValueError(f"images are {shape[2]}x{shape[3]}, the model expects {S}x{S} (or "
                             f"smaller square images whose side is a multiple of {k}): resize "
                             f"them, or build the ViT with img_size={shape[2]} (square images)")
        dtype = np.dtype(x.dtype)
        if dtype == np.uint8:
            raise TypeError("images are uint8 (raw 0..255 pixels): normalize them to floats first, "
                            "e.g. minivit.data.normalize(x, mean, std)")
        if dtype.kind not in "f":
            raise TypeError(f"images must be floating point, got {dtype}: convert and normalize "
                            f"them first, e.g. minivit.data.normalize(x, mean, std)")
        # host batches are scanned for NaN/Inf here; a batch already on the GPU is not (that
        # would make every step wait for the GPU): training checks its loss instead
        if on_host and not np.isfinite(x).all():
            raise ValueError("images contain NaN or Inf values: check the data and its "
                             "normalization (a zero std divides by zero)")
        return to_device(x, xp, self.dtype)   # a NumPy batch is copied to the GPU for CuPy

    def check_dlogits(self, dlogits, batch):
        expected = (batch, self.config.num_classes)
        if tuple(np.shape(dlogits)) != expected:
            raise ValueError(f"dlogits must have the logits' shape {expected}, got "
                             f"{tuple(np.shape(dlogits))}")
        return to_device(dlogits, self.xp, self.dtype)

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(self.config).items())
        return f"ViT({fields}, backend={self.backend!r}, params={self.num_parameters():,})"
