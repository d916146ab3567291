"""The course's exercises, in learning order: one per backward the engine has.

Each exercise is one function of the engine, named and called as the engine names and
calls it, so the engine's own function is a solution and a student's right function can
take its place in training. What each teaches, where it is derived, the small case it is
graded on (a case of the engine's gradient check, engine/gradcheck.py LAYERS, or one of
grade.py's for the loss and the optimizer), and the hints for each of its gradients.
"""

from dataclasses import dataclass, field
from importlib import import_module

from ..engine.errors import BadValue


@dataclass(frozen=True)
class Exercise:
    name: str                 # the engine's function, and the student's
    module: str               # where the engine defines it: layers, transformer, loss, optim
    teaches: str              # one line, for `minivit exercises`
    section: str              # of docs/gradients.md
    case: str                 # a gradcheck.LAYERS name, or "cross_entropy", "adam", "adamw"
    returns: tuple            # the names of what it returns, in order (a dict: "grads")
    hints: dict = field(default_factory=dict)     # a returned name -> what to look at
    factors: dict = field(default_factory=dict)   # named constants of its case -> value
    extra: bool = False       # beyond the default model (other --norm, --gelu, --stem options)
    more_cases: dict = field(default_factory=dict)  # other LAYERS cases it must pass -> what they are

    @property
    def cases(self):
        """{gradcheck.LAYERS name: what its case is} it is graded on, the first first."""
        return {self.case: "", **self.more_cases}

    @property
    def docs(self):
        return f"docs/gradients.md section {self.section}"


EXERCISES = [
    Exercise("linear_backward", "layers", "the matrix-product rule; a shared weight sums over rows",
             "1", "linear", ("dx", "dw", "db"),
             {"dx": "y_mj = sum_i x_mi W_ji + b_j: which W_ji does x_mi meet? dx has x's shape [..., Din]",
              "dw": "every row m of the flattened input contributes to dW: a sum over m, a matrix product",
              "db": "b is added to every row: its gradient sums dy over every row (all leading axes)"},
             {"M": 6}, more_cases={"linear_rows": "on rows [B, D], as the head calls it"}),
    Exercise("patch_embed_backward", "layers", "a conv with stride = kernel is a linear layer on patches",
             "2", "patch_embed", ("dx", "dw", "db"),
             {"dx": "the linear backward's patch gradients go back to their places: unpatchify",
              "dw": "the linear backward's dW_flat [D, C*p*p] reshaped to w's [D, C, p, p]"},
             {"P": 4}),
    Exercise("token_embed_backward", "layers", "a copied or broadcast input sums its copies' gradients",
             "3", "token_embed", ("dx", "dcls_token", "dpos_embed"),
             {"dx": "the patch tokens are rows 1: of y",
              "dcls_token": "the class token is copied into every image's row 0: sum over the batch",
              "dpos_embed": "the position embedding is added to every image: sum over the batch"},
             {"B": 2}),
    Exercise("layernorm_backward", "layers", "paths through the mean and the variance",
             "4", "layernorm", ("dx", "dw", "db"),
             {"dx": "x reaches y three ways: directly through xhat, through mu and through r; "
                    "each path is a term (section 4 derives d mu/dx_i and d r/dx_i)",
              "dw": "w scales xhat in every row: sum over the rows", "db": "b is added to every row: sum over the rows"},
             {"D": 8}, more_cases={"layernorm_rows": "on rows [B, D], as the head calls it"}),
    Exercise("softmax_backward", "layers", "a Jacobian that couples every entry of a row",
             "5", "softmax", ("ds",),
             {"ds": "every a_i depends on every s_j: work out the Jacobian ∂a_i/∂s_j (section 5), "
                    "then sum over i without building the N x N matrix"},
             {"N": 5}, more_cases={"softmax_heads": "on scores [B, H, N, N], as attention calls it"}),
    Exercise("sdpa_backward", "transformer", "attention: two matrix products around a softmax",
             "6", "sdpa", ("dq", "dk", "dv"),
             {"dq": "back through o = a v to a, through the softmax to s, then s = q k^T / sqrt(d) to q",
              "dk": "k enters s transposed: its gradient is a product with ds transposed (last two "
                    "axes), scaled like dq's",
              "dv": "o = a v: the matrix-product rule gives v's gradient"},
             {"sqrt(d)": 2.0}),
    Exercise("attention_backward", "transformer", "heads split and merged; the fused q, k, v projection",
             "6b", "attention", ("dx", "din_proj_weight", "din_proj_bias", "dout_proj_weight",
                                "dout_proj_bias"),
             {"dx": "do is split into heads with split_heads (not a reshape); dq, dk, dv merged "
                    "back to [B, N, D] each and joined in the order q, k, v along the last axis, "
                    "then the in-projection's linear backward",
              "din_proj_weight": "the in-projection's linear backward on dqkv [B, N, 3D]",
              "dout_proj_weight": "the out-projection's linear backward on dy"},
             {"h": 2}),
    Exercise("gelu_backward", "layers", "an elementwise derivative: the product rule",
             "7", "gelu", ("dx",),
             {"dx": "y = x Phi(x) is a product: the product rule, with Phi' = phi, the normal "
                    "density exp(-x^2/2) / sqrt(2 pi)"}),
    Exercise("mlp_backward", "transformer", "the chain rule through three layers",
             "8", "mlp", ("dx", "dw1", "db1", "dw2", "db2"),
             {"dx": "back through the second linear, the GELU (cache.gelu_backward: the one the "
                    "forward used, exact or tanh), the first linear"},
             more_cases={"mlp_tanh": "with the tanh GELU"}),
    Exercise("block_backward", "transformer", "residuals pass the gradient through and add a branch's",
             "9", "block_drop_path", ("dx", "grads"),
             {"dx": "a residual y = x + k f(x) gives dx = dy + f_backward(k dy): the MLP half "
                    "first, then the attention half on dx1",
              "grads": "a half's parameters are wrong when the gradient entering it is: the MLP "
                       "half gets k2 dy, the attention half k1 dx1 with dx1 = dy + the MLP half's dx"},
             more_cases={"block_rmsnorm": "with RMSNorm"}),
    Exercise("head_backward", "transformer", "pooling: one token, or a mean of many, gets the gradient",
             "10", "head", ("dh", "grads"),
             {"dh": "the linear's, the norm's, then the pooling's backward (pool_backward)",
              "grads": "the dict holds every head parameter's gradient: norm.weight, norm.bias, "
                       "head.weight, head.bias, and attention_pool.weight with pool 'seq' "
                       "(pool_backward's second value)"},
             more_cases={"head_mean": "with pool 'mean'", "head_seq": "with pool 'seq'"}),
    Exercise("cross_entropy", "loss", "log-softmax's Jacobian, label smoothing, a stable log-sum-exp",
             "11", "cross_entropy", ("loss", "dlogits"),
             {"loss": "loss = -(1/B) sum_b sum_k q_bk log p_bk, log p computed stably",
              "dlogits": "work out d(-sum_k q_k log p_k)/dz_j (section 11); the loss is a mean over B rows"},
             {"B": 4.0, "K": 5.0}),
    Exercise("adam_update", "optim", "Adam's moments and bias corrections, in place",
             "13", "adam", ("w", "m", "v"),
             {"m": "b1 m + (1 - b1) g = m + (1 - b1)(g - m), with Adam's decay term in g",
              "v": "v's average is of g^2 (with the decay term in g)",
              "w": "the step: step_size m / (sqrt(v) / bias_correction2_sqrt + eps), eps outside the root"}),
    Exercise("adamw_update", "optim", "decoupled weight decay: shrink the weight, not the gradient",
             "13", "adamw", ("w", "m", "v"),
             {"w": "first w -= lr decay w, then the Adam step with the raw gradient",
              "m": "AdamW's moments see the gradient without the decay term"}),
    Exercise("rmsnorm_backward", "layers", "LayerNorm without the mean (--norm rmsnorm)",
             "4b", "rmsnorm", ("dx", "dw"),
             {"dx": "x reaches y directly and through r (no mean here): two terms"}, {"D": 8}, extra=True,
             more_cases={"rmsnorm_rows": "on rows [B, D], as the head calls it"}),
    Exercise("gelu_tanh_backward", "layers", "GELU's tanh approximation (--gelu tanh)",
             "7", "gelu_tanh", ("dx",),
             {"dx": "the product rule on x (1 + t)/2, then the chain rule through t = tanh(u) "
                    "(tanh' = 1 - t^2) and u(x)"}, extra=True),
    Exercise("conv2d_backward", "layers", "overlapping windows add up: col2im (--stem-channels)",
             "2b", "conv2d", ("dx", "dw", "db"),
             {"dx": "every window's gradient added back at its place in the padded image "
                    "(+=, windows overlap), then the padding cut off"}, extra=True,
             more_cases={"conv2d_stride1": "with stride 1"}),
]

BY_NAME = {e.name: e for e in EXERCISES}


def exercise(name):
    """The exercise of that name, or BadValue (a ValueError) naming the exercises."""
    if name not in BY_NAME:
        raise BadValue(f"no exercise named {name!r}: the exercises are "
                       f"{', '.join(BY_NAME)} (`minivit exercises` lists them)")
    return BY_NAME[name]


def number(name):
    """The exercise's place in learning order, from 1."""
    return list(BY_NAME).index(exercise(name).name) + 1


# name -> the engine's function, read when the course is imported (before a student's
# file or a training run could swap anything)
ENGINE = {e.name: getattr(import_module(f"minivit.engine.{e.module}"), e.name) for e in EXERCISES}


def engine_function(name):
    """The engine's own function (the solution) of an exercise."""
    return ENGINE[exercise(name).name]


def listing():
    """The exercises in learning order, a line each: what it teaches, where it is derived."""
    lines = ["The course: write each backward pass of the ViT yourself (`minivit exercises new FILE`),",
             "grade it (`minivit exercises check FILE`), then train on it (`minivit train --layers FILE`).",
             ""]
    for i, e in enumerate(EXERCISES, 1):
        if e.extra and not EXERCISES[i - 2].extra:
            lines += ["", "More, for the model's other options (checked when named, or with --all):"]
        lines.append(f"{i:3d}  {e.name:<22s} {e.teaches}  ({e.docs})")
    return "\n".join(lines)
