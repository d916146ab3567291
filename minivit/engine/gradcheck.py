"""Gradient checking: hand-derived gradients against centered finite differences.

For a function out = f(inputs) and a fixed random upstream gradient G (never all ones,
which would hide transposed or mis-summed gradients), the scalar L = sum(out * G) has
dL/d(input) = backward(G). Each input element is nudged by +-eps and

    numeric = (L(x + eps) - L(x - eps)) / (2 eps)        (error O(eps^2))

is compared with the analytic value. Per tensor we report the largest absolute error and
the relative error ||analytic - numeric|| / max(||analytic||, ||numeric||); a tensor
passes when the relative error is within the mark, or when every difference is below
what the differences can resolve at all, 10 u |L| / eps (u: the dtype's machine epsilon;
a gradient that small, such as the key bias's, which is exactly zero, is rounding noise
on both sides, and its relative error means nothing).

    from minivit import gradcheck
    print(gradcheck.check_layer("attention"))       # one layer, float64, a table
    print(gradcheck.check_model(ViT(..., dtype="float64")))

In float64 a correct backward gives relative errors near 1e-10; 1e-7 is the pass mark.
In float32 the rounding of L (about 1e-7 of its size) divided by 2 eps swamps small
gradients, so a larger eps and a looser mark are used (see TOLERANCES).
"""

from dataclasses import dataclass

import numpy as np

from . import layers, resize, transformer
from .backend import array_module, get_xp, to_device, to_host
from .draws import StepDraws
from .loss import cross_entropy
from .model import ViT

# dtype -> (eps, relative-error pass mark)
# (float32: eps 1e-2 let the curvature error of whole models reach 3e-2; 3e-3 balances the two)
TOLERANCES = {"float64": (3e-6, 1e-7), "float32": (3e-3, 2e-2)}


@dataclass
class TensorResult:
    name: str
    shape: tuple
    checked: int        # elements compared (all, unless max_checks sampled fewer)
    max_abs_err: float
    rel_err: float
    passed: bool


class Report:
    """The results of one check, one row per tensor; str() gives a table."""

    def __init__(self, title, results, dtype, eps, tol):
        self.title, self.results, self.dtype, self.eps, self.tol = title, results, dtype, eps, tol

    @property
    def passed(self):
        return all(r.passed for r in self.results)

    @property
    def max_rel_err(self):
        return max(r.rel_err for r in self.results)

    def __getitem__(self, name):
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def table(self):
        rows = [("tensor", "shape", "checked", "max abs err", "rel err", "result")]
        for r in self.results:
            rows.append((r.name, "x".join(map(str, r.shape)) or "scalar", str(r.checked),
                         f"{r.max_abs_err:.2e}", f"{r.rel_err:.2e}", "pass" if r.passed else "FAIL"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        step = f", eps={self.eps:g}" if self.eps else ""
        lines = [f"{self.title}  ({self.dtype}{step}, pass if rel err <= {self.tol:g})"]
        for j, row in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
            if j == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append("all passed" if self.passed else "SOME GRADIENTS ARE WRONG")
        return "\n".join(lines)

    __str__ = table


def _defaults(dtype, eps, tol):
    d_eps, d_tol = TOLERANCES[str(np.dtype(dtype))]
    return (d_eps if eps is None else eps), (d_tol if tol is None else tol)


def _indices(size, max_checks, rng):
    if max_checks is None or size <= max_checks:
        return np.arange(size)
    return np.sort(rng.choice(size, max_checks, replace=False))


def numeric_gradient(objective, arr, eps, indices):
    """Centered differences of the scalar objective() w.r.t. the given flat indices of
    arr, nudging arr in place (and restoring it). arr must be contiguous."""
    flat = arr.reshape(-1)  # a view, since arr is contiguous
    out = np.zeros(len(indices))
    for j, i in enumerate(indices):
        old = flat[i].copy()
        flat[i] = old + eps
        plus = objective()
        flat[i] = old - eps
        minus = objective()
        flat[i] = old
        out[j] = (plus - minus) / (2 * eps)
    return out


def resolution(L, dtype, eps):
    """The smallest gradient the centered difference resolves: L's rounding error,
    about u |L| (u: machine epsilon of dtype), over 2 eps, with a margin of 20."""
    return 10 * np.finfo(dtype).eps * max(abs(L), 1.0) / eps


def _compare(name, analytic, arr, objective, eps, tol, max_checks, rng, floor):
    idx = _indices(arr.size, max_checks, rng)
    numeric = numeric_gradient(objective, arr, eps, idx)
    a = to_host(analytic).reshape(-1)[idx].astype(np.float64)
    diff = np.abs(a - numeric)
    scale = max(np.linalg.norm(a), np.linalg.norm(numeric))
    rel = float(np.linalg.norm(a - numeric) / scale) if scale > 0 else 0.0
    max_abs = float(diff.max(initial=0.0))
    return TensorResult(name, tuple(arr.shape), len(idx), max_abs, rel, rel <= tol or max_abs <= floor)


def check(forward, backward, inputs, *, seed=0, eps=None, tol=None, max_checks=None, title="check"):
    """Check any forward/backward pair.

    forward(**inputs) -> (out, cache);  backward(dout, cache) -> the gradient of every
    input, as a tuple in the order of ``inputs`` or a dict keyed by input name (or one
    array when there is one input).
    inputs: {name: array}, all of one float dtype and backend. Returns a Report.
    """
    inputs = {k: array_module(v).ascontiguousarray(v) for k, v in inputs.items()}
    first = next(iter(inputs.values()))
    xp, dtype = array_module(first), first.dtype
    eps, tol = _defaults(dtype, eps, tol)
    rng = np.random.default_rng(seed)
    out, cache = forward(**inputs)
    G = to_device(rng.standard_normal(np.shape(out)), xp, dtype)     # random upstream grad
    grads = backward(G, cache)
    if not isinstance(grads, (tuple, list, dict)):   # a one-input layer returns dx alone
        grads = (grads,)
    if not isinstance(grads, dict):
        grads = dict(zip(inputs, grads))

    def objective():
        return float((forward(**inputs)[0] * G).sum())

    floor = resolution(float((out * G).sum()), dtype, eps)
    results = [_compare(name, grads[name], arr, objective, eps, tol, max_checks, rng, floor)
               for name, arr in inputs.items()]
    return Report(title, results, str(dtype), eps, tol)


def check_model(model, x=None, batch_size=2, *, seed=0, eps=None, tol=None, max_checks=None,
                draws_seed=None, net=None, title=None):
    """Check the whole ViT: the gradient of sum(logits * G) w.r.t. the input images and
    every parameter (perturbed in place in the model, then restored). draws_seed: a
    training step's forward, with the random draws (StepDraws: stochastic depth's masks)
    of this seed at every evaluation. net: check another runner of the model's forward
    and backward (the fast path's FastRunner). x may be smaller square images than
    img_size (the position embedding is resized)."""
    net = model if net is None else net

    def run():
        draws = None if draws_seed is None else StepDraws.sample(
            model.config, len(x), np.random.default_rng(draws_seed), model.xp, model.dtype)
        return net.forward(x, draws=draws)

    rng = np.random.default_rng(seed)
    if x is None:
        c = model.config
        x = rng.standard_normal((batch_size, c.in_chans, c.img_size, c.img_size))
    x = model.xp.ascontiguousarray(to_device(x, model.xp, model.dtype))
    eps, tol = _defaults(model.dtype, eps, tol)
    logits = run()
    G = to_device(rng.standard_normal(logits.shape), model.xp, model.dtype)
    model.zero_grad()
    dx = net.backward(G)
    grads = {"input": dx, **{k: v.copy() for k, v in model.grads().items()}}
    model.zero_grad()

    def objective():
        return float((run() * G).sum())

    tensors = {"input": x, **model.state_dict()}
    floor = resolution(float((logits * G).sum()), model.dtype, eps)
    results = [_compare(name, grads[name], arr, objective, eps, tol, max_checks, rng, floor)
               for name, arr in tensors.items()]
    net.forward(x[:1], keep_cache=False)      # drop the last check's activations
    title = title or f"ViT (depth {model.config.depth}, dim {model.config.embed_dim})"
    return Report(title, results, str(model.dtype), eps, tol)


# ---------------------------------------------- the whole model, as the presets train it

_SMALL = dict(img_size=8, embed_dim=8, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=3)

# name -> (ViT fields, image side, draws_seed, what it covers)
MODELS = {
    "vit": (dict(_SMALL, patch_size=4), 8, None,
            "SimpleViT, class token (presets seed, default, sample)"),
    "hybrid_low_res": (dict(_SMALL, patch_size=2, stem_channels=4, stem_stride=1, drop_path=0.5),
                       4, 1, "stride-1 conv stem, 4x4 images (position embedding resized 4x4 -> "
                             "2x2), drop path (preset hybrid, --low-res, --drop-path)"),
    "stem2_mean_pool": (dict(_SMALL, patch_size=2, stem_channels=4, stem_layers=2, pool="mean"),
                        8, None, "two-conv stem (stride 1, then 2), mean pooling "
                                 "(--stem-layers 2, --pool mean)"),
    "seq_pool": (dict(_SMALL, patch_size=2, stem_channels=4, pool="seq"), 8, None,
                 "sequence pooling (--pool seq): the last block in full"),
    "rmsnorm": (dict(_SMALL, patch_size=4, norm="rmsnorm"), 8, None,
                "RMSNorm in the blocks and the head (--norm rmsnorm)"),
}


def check_models(dtype="float64", backend="numpy", *, max_checks=None, seed=0, runners=None):
    """`minivit gradcheck --model`: every configuration in MODELS -> a list of Reports.
    runners: {name: model -> a runner of its forward and backward}, default the engine's
    ViT alone ({"reference": None}); the command adds the fast path's."""
    reports = []
    for name, (fields, side, draws_seed, what) in MODELS.items():
        for runner, wrap in (runners or {"reference": None}).items():
            model = ViT(**fields, dtype=dtype, backend=backend, seed=seed)
            x = np.random.default_rng(seed).standard_normal((2, model.config.in_chans, side, side))
            reports.append(check_model(model, x, seed=seed, max_checks=max_checks,
                                       net=None if wrap is None else wrap(model),
                                       draws_seed=draws_seed, title=f"model {name}, {runner}: {what}"))
    return reports


# ------------------------------------------------------------ every layer, small sizes

def block_case(rng, drop_path=False, norm="layernorm", forward=None, backward=None):
    """A pre-norm block of width 8, 2 heads, as gradcheck.check takes it. forward /
    backward: another implementation with block_forward's and block_backward's
    signatures (the fast path's class-token-only block)."""
    D, F, H = 8, 16, 2
    shapes = transformer.block_param_shapes(D, F, norm)
    p = {name: (1.0 if name.endswith("norm1.weight") or name.endswith("norm2.weight") else 0.0)
         + (0.1 if len(shape) == 1 else 0.3) * rng.standard_normal(shape)
         for name, shape in shapes.items()}
    inputs = {"x": rng.standard_normal((3, 5, D)), **p}
    # stochastic depth, rate 0.5: image 1 skips attention, image 2 skips the MLP
    keep = (np.array([2.0, 0.0, 2.0])[:, None, None], np.array([2.0, 2.0, 0.0])[:, None, None])

    def run_forward(x, **p):
        k = None if not drop_path else tuple(to_device(m, array_module(x), x.dtype) for m in keep)
        return (forward or transformer.block_forward)(x, p, H, keep=k, norm=norm)

    def run_backward(dy, cache):
        dx, grads = (backward or transformer.block_backward)(dy, cache)
        return {"x": dx, **grads}
    return run_forward, run_backward, inputs


def _cross_entropy_case(smoothing):
    def case(rng):
        labels = rng.integers(0, 5, size=4)

        def forward(logits):
            loss, dlogits = cross_entropy(logits, to_device(labels, array_module(logits)), smoothing)
            return loss, dlogits

        def backward(dloss, dlogits):
            return (dloss * dlogits,)
        return forward, backward, {"logits": 2 * rng.standard_normal((4, 5))}
    return case


def _soft_target_case(rng):
    q = rng.random((4, 5))
    q /= q.sum(axis=1, keepdims=True)                # rows of probabilities, as mixup makes

    def forward(logits):
        return cross_entropy(logits, to_device(q, array_module(logits), logits.dtype), 0.1)

    def backward(dloss, dlogits):
        return (dloss * dlogits,)
    return forward, backward, {"logits": 2 * rng.standard_normal((4, 5))}


def _head_case(pool, norm="layernorm"):
    def case(rng):
        shapes = transformer.head_param_shapes(6, 4, pool, norm)
        p = {name: (1.0 if name == "norm.weight" else 0.0)
             + (0.3 if name.startswith("norm") else 0.5) * rng.standard_normal(shape)
             for name, shape in shapes.items()}
        inputs = {"h": rng.standard_normal((3, 5, 6)), **p}

        def backward(dlogits, cache):
            dh, grads = transformer.head_backward(dlogits, cache)
            return {"h": dh, **grads}
        return (lambda h, **p: transformer.head_forward(h, p, pool, norm)), backward, inputs
    return case


def _gelu_case(kind):
    def case(rng):
        forward, backward = layers.GELUS[kind]
        return forward, backward, {"x": 2 * rng.standard_normal((3, 7))}
    return case


def _mlp_case(gelu):
    def case(rng):
        return (lambda **kw: transformer.mlp_forward(**kw, gelu=gelu)), transformer.mlp_backward, {
            "x": rng.standard_normal((2, 3, 6)),
            "w1": 0.5 * rng.standard_normal((12, 6)), "b1": 0.1 * rng.standard_normal(12),
            "w2": 0.5 * rng.standard_normal((6, 12)), "b2": 0.1 * rng.standard_normal(6)}
    return case


# name -> rng -> (forward, backward, float64 host inputs)
LAYERS = {
    "linear": lambda rng: (layers.linear_forward, layers.linear_backward,
                           {"x": rng.standard_normal((2, 3, 5)), "w": rng.standard_normal((4, 5)),
                            "b": rng.standard_normal(4)}),
    "linear_rows": lambda rng: (layers.linear_forward, layers.linear_backward,   # [B, D], as the head
                                {"x": rng.standard_normal((6, 5)), "w": rng.standard_normal((4, 5)),
                                 "b": rng.standard_normal(4)}),
    "patch_embed": lambda rng: (layers.patch_embed_forward, layers.patch_embed_backward,
                                {"x": rng.standard_normal((2, 3, 8, 8)),
                                 "w": 0.2 * rng.standard_normal((6, 3, 4, 4)),
                                 "b": rng.standard_normal(6)}),
    "conv2d": lambda rng: (lambda x, w, b: layers.conv2d_forward(x, w, b, stride=2, padding=1),
                           layers.conv2d_backward,
                           {"x": rng.standard_normal((2, 3, 7, 7)),
                            "w": 0.3 * rng.standard_normal((4, 3, 3, 3)), "b": rng.standard_normal(4)}),
    "conv2d_stride1": lambda rng: (lambda x, w, b: layers.conv2d_forward(x, w, b, stride=1, padding=1),
                                   layers.conv2d_backward,
                                   {"x": rng.standard_normal((2, 3, 5, 5)),
                                    "w": 0.3 * rng.standard_normal((4, 3, 3, 3)), "b": rng.standard_normal(4)}),
    "area_resize": lambda rng: (lambda x: resize.area_resize_forward(x, 3), resize.area_resize_backward,
                                {"x": rng.standard_normal((2, 3, 7, 7))}),
    "pos_embed_resize": lambda rng: (lambda pos_embed: resize.pos_embed_resize_forward(pos_embed, 2),
                                     resize.pos_embed_resize_backward,
                                     {"pos_embed": rng.standard_normal((1, 17, 6))}),
    "token_embed": lambda rng: (layers.token_embed_forward, layers.token_embed_backward,
                                {"x": rng.standard_normal((2, 4, 6)),
                                 "cls_token": rng.standard_normal((1, 1, 6)),
                                 "pos_embed": rng.standard_normal((1, 5, 6))}),
    "layernorm": lambda rng: (layers.layernorm_forward, layers.layernorm_backward,
                              {"x": 3 * rng.standard_normal((2, 3, 8)) + 1,
                               "w": 1 + 0.5 * rng.standard_normal(8), "b": rng.standard_normal(8)}),
    "layernorm_rows": lambda rng: (layers.layernorm_forward, layers.layernorm_backward,  # [B, D]
                                   {"x": 3 * rng.standard_normal((5, 8)) + 1,
                                    "w": 1 + 0.5 * rng.standard_normal(8), "b": rng.standard_normal(8)}),
    "rmsnorm": lambda rng: (layers.rmsnorm_forward, layers.rmsnorm_backward,
                            {"x": 3 * rng.standard_normal((2, 3, 8)) + 1,
                             "w": 1 + 0.5 * rng.standard_normal(8)}),
    "rmsnorm_rows": lambda rng: (layers.rmsnorm_forward, layers.rmsnorm_backward,        # [B, D]
                                 {"x": 3 * rng.standard_normal((5, 8)) + 1,
                                  "w": 1 + 0.5 * rng.standard_normal(8)}),
    "softmax": lambda rng: (layers.softmax_forward, layers.softmax_backward,
                            {"s": 2 * rng.standard_normal((2, 3, 5))}),
    "softmax_heads": lambda rng: (layers.softmax_forward, layers.softmax_backward,  # [B, H, N, N]
                                  {"s": 2 * rng.standard_normal((2, 2, 3, 5))}),
    "gelu": _gelu_case("exact"),
    "gelu_tanh": _gelu_case("tanh"),
    "sdpa": lambda rng: (transformer.sdpa_forward, transformer.sdpa_backward,
                         {"q": rng.standard_normal((2, 2, 3, 4)), "k": rng.standard_normal((2, 2, 5, 4)),
                          "v": rng.standard_normal((2, 2, 5, 4))}),
    "attention": lambda rng: (lambda **kw: transformer.attention_forward(**kw, num_heads=2),
                              transformer.attention_backward,
                              {"x": rng.standard_normal((2, 5, 8)),
                               "in_proj_weight": 0.4 * rng.standard_normal((24, 8)),
                               "in_proj_bias": 0.1 * rng.standard_normal(24),
                               "out_proj_weight": 0.4 * rng.standard_normal((8, 8)),
                               "out_proj_bias": 0.1 * rng.standard_normal(8)}),
    "mlp": _mlp_case("exact"),
    "mlp_tanh": _mlp_case("tanh"),
    "head": _head_case("cls"),
    "head_mean": _head_case("mean"),
    "seq_pool": lambda rng: (transformer.seq_pool_forward, transformer.seq_pool_backward,
                             {"h": rng.standard_normal((3, 5, 6)), "w": rng.standard_normal((1, 6))}),
    "head_seq": _head_case("seq"),
    "head_rmsnorm": _head_case("cls", "rmsnorm"),
    "block": block_case,
    "block_drop_path": lambda rng: block_case(rng, drop_path=True),
    "block_rmsnorm": lambda rng: block_case(rng, drop_path=True, norm="rmsnorm"),
    "cross_entropy": _cross_entropy_case(0.0),
    "cross_entropy_smoothed": _cross_entropy_case(0.1),
    "cross_entropy_soft": _soft_target_case,
}


def check_layer(name, dtype="float64", backend="numpy", *, seed=0, eps=None, tol=None, max_checks=None):
    """Gradient-check one layer of LAYERS on small random inputs; returns a Report."""
    if name not in LAYERS:
        raise ValueError(f"unknown layer {name!r}: choose one of {', '.join(LAYERS)}")
    xp = get_xp(backend)
    rng = np.random.default_rng(seed)
    forward, backward, host_inputs = LAYERS[name](rng)
    inputs = {k: to_device(v, xp, dtype) for k, v in host_inputs.items()}
    return check(forward, backward, inputs, seed=seed, eps=eps, tol=tol,
                 max_checks=max_checks, title=name)
