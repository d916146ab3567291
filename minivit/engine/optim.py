"""The optimizers: Adam and AdamW (PyTorch's update rules) and Muon (orthogonalized
updates of the weight matrices), global-norm gradient clipping and a weight average (EMA);
the learning-rate schedules are in minivit/schedule.py.

An optimizer takes ``model.parameters()`` (a list of Param with .name, .data, .grad) or
parameter groups as in PyTorch: ``[{"params": [...], "weight_decay": 0.0}, {"params": [...]}]``
where a group's own weight_decay overrides the optimizer's. Updates happen in place on
``param.data``, so the model sees them at once.
"""

import contextlib
import math

import numpy as np

from .backend import array_module, kernel, to_device, to_host


def _groups(params, weight_decay):
    params = list(params)
    if not params:
        raise ValueError("optimizer got an empty parameter list")
    if not isinstance(params[0], dict):
        params = [{"params": params}]
    groups = []
    for g in params:
        plist = list(g["params"])
        for p in plist:
            if not (hasattr(p, "data") and hasattr(p, "grad")):
                raise TypeError(f"optimizer parameters must have .data and .grad "
                                f"(use model.parameters()), got {type(p).__name__}")
        groups.append({"params": plist, "weight_decay": float(g.get("weight_decay", weight_decay))})
    return groups


def segments(params):
    """The arrays an update runs on, as (data, grad, [(param, offset)]) triples. When
    params all belong to one model (model.parameters() lays them out in model.flat_params
    / flat_grads), each run of parameters that lie next to each other there is one slice
    of the flat buffers: every parameter of the model is one pair of flat arrays, so each
    update is a few whole-buffer operations. Else one triple per parameter."""
    params = list(params)
    owner = getattr(params[0], "owner", None)
    if owner is None or not all(getattr(p, "owner", None) is owner for p in params):
        return [(p.data.reshape(-1), p.grad.reshape(-1), [(p, 0)]) for p in params]
    runs = []                                    # [start, end, [(param, offset in run)]]
    for p in sorted(params, key=lambda p: p.offset):
        if runs and runs[-1][1] == p.offset:
            runs[-1][1] += p.data.size
            runs[-1][2].append((p, p.offset - runs[-1][0]))
        else:
            runs.append([p.offset, p.offset + p.data.size, [(p, 0)]])
    return [(owner.flat_params[a:b], owner.flat_grads[a:b], members) for a, b, members in runs]


# The update kernels take every term that depends on scalars alone (1 - b1, the step size,
# ...) computed on the host: inside cupy.fuse an operation between two Python numbers is
# typed by CuPy's first matching loop, float16, so `(1.0 - b2)` would round 0.001 to
# 0.000977 on a GPU. Each operation in a kernel body has an array operand.

@kernel
def adam_update(xp, w, g, m, v, decay, ok, step_size, one_minus_b1, one_minus_b2,
                bias_correction2_sqrt, eps):
    """One Adam step on whole arrays (torch.optim.Adam's arithmetic): the L2 penalty
    decay * w joins the gradient. ok (a device bool) leaves everything as it was when False."""
    g = g + decay * w
    m += xp.where(ok, one_minus_b1 * (g - m), 0.0)                # m = b1 m + (1 - b1) g
    v += xp.where(ok, one_minus_b2 * (g * g - v), 0.0)            # v = b2 v + (1 - b2) g^2
    w -= xp.where(ok, step_size * m / (xp.sqrt(v) / bias_correction2_sqrt + eps), 0.0)
    return w


@kernel
def adamw_update(xp, w, g, m, v, decay, ok, step_size, one_minus_b1, one_minus_b2,
                 bias_correction2_sqrt, eps, lr):
    """One AdamW step: the weight shrinks by lr * decay * w first, then the Adam step
    (without decay in the gradient)."""
    w -= xp.where(ok, lr * (decay * w), 0.0)                      # w = w (1 - lr decay)
    m += xp.where(ok, one_minus_b1 * (g - m), 0.0)
    v += xp.where(ok, one_minus_b2 * (g * g - v), 0.0)
    w -= xp.where(ok, step_size * m / (xp.sqrt(v) / bias_correction2_sqrt + eps), 0.0)
    return w


class Adam:
    """Adam (Kingma & Ba), step for step as torch.optim.Adam.

    For each parameter w with gradient g, at step t = 1, 2, ...:
        g   = g + wd w                       (Adam: L2 penalty added to the gradient)
        m   = b1 m + (1 - b1) g
        v   = b2 v + (1 - b2) g^2
        w   = w - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    The update is elementwise, so it runs on whole arrays: on model.parameters() the two
    flat buffers of the model, with wd a flat array (each parameter's group's decay), in
    one kernel (adam_update).
    """

    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if not lr > 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if not eps >= 0 or not weight_decay >= 0:
            raise ValueError(f"eps and weight_decay must be >= 0, got {eps}, {weight_decay}")
        self.lr, self.betas, self.eps = float(lr), tuple(float(b) for b in betas), float(eps)
        self.param_groups = _groups(params, weight_decay)
        decay_of = {id(p): g["weight_decay"] for g in self.param_groups for p in g["params"]}
        self.t = 0
        self.m, self.v = {}, {}                 # per parameter name: views into the moments
        self._segments = []                     # (w, g, m, v, decay) whole arrays
        for w, grad, members in segments([p for g in self.param_groups for p in g["params"]]):
            xp = array_module(w)
            m, v = xp.zeros_like(w), xp.zeros_like(w)
            decay = np.zeros(w.size)
            for p, offset in members:
                n = p.data.size
                decay[offset:offset + n] = decay_of[id(p)]
                self.m[p.name] = m[offset:offset + n].reshape(p.data.shape)
                self.v[p.name] = v[offset:offset + n].reshape(p.data.shape)
            decay = float(decay[0]) if len(set(decay.tolist())) == 1 else to_device(decay, xp, w.dtype)
            self._segments.append((w, grad, m, v, decay))
        xp = array_module(self._segments[0][0])
        self._flags = {True: xp.ones((), dtype=bool), False: xp.zeros((), dtype=bool)}

    def step(self, ok=None):
        """One update of every parameter from its .grad (clip or scale grads before).
        ok: a 0-d device bool that is False to make this step change nothing, e.g. a flag
        that the gradients are finite, read without waiting for the device. None or a
        Python bool use a device flag made once (the kernels take no host number as ok)."""
        ok = self._device_flag(ok)
        self.t += 1
        b1, b2 = self.betas
        step_size = self.lr / (1.0 - b1 ** self.t)
        bc2 = math.sqrt(1.0 - b2 ** self.t)
        for w, g, m, v, decay in self._segments:
            if self.decoupled:
                adamw_update(w, g, m, v, decay, ok, step_size, 1.0 - b1, 1.0 - b2, bc2,
                             self.eps, self.lr)
            else:
                adam_update(w, g, m, v, decay, ok, step_size, 1.0 - b1, 1.0 - b2, bc2, self.eps)

    def _device_flag(self, ok):
        """ok as a 0-d device bool: None or a Python bool become a device flag made once."""
        if ok is None or isinstance(ok, (bool, int, float, np.generic)):
            return self._flags[ok is None or bool(ok)]
        return ok

    def state_dict(self):
        """Host copies of the step count, hyper-parameters and moment estimates."""
        state = {"t": self.t, "lr": self.lr, "betas": self.betas, "eps": self.eps}
        for name in self.m:
            state[f"m.{name}"] = to_host(self.m[name]).copy()
            state[f"v.{name}"] = to_host(self.v[name]).copy()
        return state

    def load_state_dict(self, state):
        names = [k for k in (f"{x}.{n}" for n in self.m for x in "mv") if k not in state]
        if names:
            raise ValueError(f"optimizer state is missing {len(names)} entries "
                             f"(first: {names[0]}); it was saved for a different model")
        self.t, self.lr = int(state["t"]), float(state["lr"])
        self.betas, self.eps = tuple(float(b) for b in state["betas"]), float(state["eps"])
        for name in self.m:
            xp = array_module(self.m[name])
            self.m[name][...] = to_device(state[f"m.{name}"], xp, self.m[name].dtype)
            self.v[name][...] = to_device(state[f"v.{name}"], xp, self.v[name].dtype)


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter), as torch.optim.AdamW: the same moments as Adam, but
    the decay shrinks the weight directly, w = w (1 - lr wd), before the Adam update,
    instead of entering the gradient (and so the moments)."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


@kernel
def _clip_coefficient(xp, sum_sq, max_norm):
    """-> (||g||, min(1, max_norm / (||g|| + 1e-6)))."""
    norm = xp.sqrt(sum_sq)
    return norm, xp.minimum(max_norm / (norm + 1e-6), 1.0)


def grad_norm_squared(params):
    """sum of g^2 over every gradient, a 0-d array (no device sync)."""
    parts = [g for _, g, _ in segments(params)]
    xp = array_module(parts[0])
    total = xp.vdot(parts[0], parts[0])
    for g in parts[1:]:
        total = total + xp.vdot(g, g)
    return total


def clip_grad_norm(params, max_norm, sum_sq=None):
    """Scale every gradient by min(1, max_norm / (||g|| + 1e-6)), ||g|| the norm of all
    gradients together (as torch.nn.utils.clip_grad_norm_). Returns ||g|| before clipping
    as a 0-d array (no device sync). params: Params (their .grad is used); sum_sq:
    grad_norm_squared(params) when the caller has it already."""
    if sum_sq is None:
        sum_sq = grad_norm_squared(params)
    norm, coef = _clip_coefficient(sum_sq, float(max_norm))
    for _, g, _ in segments(params):
        g *= coef.astype(g.dtype, copy=False)
    return norm


@kernel
def _ema_update(xp, shadow, w, one_minus_d):
    shadow += one_minus_d * (w - shadow)        # shadow = d shadow + (1 - d) w
    return shadow


class EMA:
    """An exponential moving average of a model's weights, for evaluation.

    After every optimizer step: shadow = d shadow + (1 - d) w, with the decay warmed up as
    d_t = min(decay, (1 + t) / (10 + t)) so the early average is not stuck at the random
    initial weights. Works on the model's flat parameter buffer: one array operation.

        ema = EMA(model, 0.999)
        ...  opt.step(); ema.update()
        with ema.applied():          # the model holds the averaged weights inside
            evaluate(model)
    """

    def __init__(self, model, decay=0.999):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.model, self.decay, self.t = model, float(decay), 0
        self.shadow = model.flat_params.copy()

    def update(self):
        self.t += 1
        d = min(self.decay, (1.0 + self.t) / (10.0 + self.t))
        _ema_update(self.shadow, self.model.flat_params, 1.0 - d)     # 1 - d on the host

    @contextlib.contextmanager
    def applied(self):
        """Swap the averaged weights into the model for the duration of the block."""
        saved = self.model.flat_params.copy()
        self.model.flat_params[...] = self.shadow
        try:
            yield self.model
        finally:
            self.model.flat_params[...] = saved

    def state_dict(self):
        return {"t": self.t, "decay": self.decay, "shadow": to_host(self.shadow).copy()}

    def load_state_dict(self, state):
        self.t, self.decay = int(state["t"]), float(state["decay"])
        self.shadow[...] = to_device(state["shadow"], array_module(self.shadow), self.shadow.dtype)


# ---------------------------------------------------------------- Muon

# Newton-Schulz quintic coefficients (Jordan et al.): steep at 0, so 5 iterations take
# every singular value of a unit-norm matrix into roughly [0.7, 1.2].
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


def orthogonalize(g, steps=5):
    """An approximate U V^T of a matrix g = U S V^T (its "zeroth power": every singular
    value set to about 1), by the Newton-Schulz iteration X <- a X + (b A + c A^2) X with
    A = X X^T, from X = g / ||g||_F (so no singular value exceeds 1). g: [m, n], or a stack
    [G, m, n] done matrix by matrix in the same operations. Runs on the wide orientation,
    so A is the smaller Gram matrix."""
    xp = array_module(g)
    a, b, c = NEWTON_SCHULZ
    x = g / (xp.sqrt((g * g).sum(axis=(-2, -1), keepdims=True)) + 1e-7)
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.swapaxes(-2, -1)
    for _ in range(steps):
        gram = x @ x.swapaxes(-2, -1)                                   # [m, m], m <= n
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.swapaxes(-2, -1) if tall else x


@kernel
def _nesterov_momentum(xp, buf, g, ok, one_minus_mu, mu):
    """buf = mu buf + g (when ok) -> the Nesterov direction g + mu buf."""
    buf += xp.where(ok, g - one_minus_mu * buf, 0.0)
    return g + mu * buf


@kernel
def _muon_apply(xp, w, o, ok, step_size, shrink):
    """w = w - lr wd w - step o (when ok)."""
    w -= xp.where(ok, shrink * w + step_size * o, 0.0)
    return w


class Muon(AdamW):
    """Muon (momentum, orthogonalized) for the weight matrices, AdamW for the rest.

    For a weight matrix W [m, n] (a conv kernel as [out, in k k]) with gradient G:
        B = mu B + G                         (momentum, mu = 0.95)
        O = orthogonalize(G + mu B)          (Nesterov; every singular value about 1)
        W = W - lr wd W - lr 0.2 sqrt(max(m, n)) O
    The factor 0.2 sqrt(max(m, n)) gives O the root-mean-square size of a typical AdamW
    update (Moonlight's scaling), so one learning rate and weight decay serve both
    rules. An update with every direction of equal size lets the rarely-pushed directions
    of W learn as fast as the dominant ones. Matrices of one shape (the same layer of
    every block) are orthogonalized together, as one stack.

        Muon(matrices, other_groups, lr=2e-3, weight_decay=0.05)
    matrices: Params updated by Muon (weight decay weight_decay); other_groups: AdamW's
    parameters or groups, as AdamW takes them.
    """

    def __init__(self, matrices, others, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=1e-2, momentum=0.95, steps=5):
        super().__init__(others, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon momentum must be in [0, 1), got {momentum}")
        self.momentum, self.steps, self.muon_decay = float(momentum), int(steps), float(weight_decay)
        self.stacks = {}                          # (m, n) -> the Params of that shape
        for p in matrices:
            self.stacks.setdefault((len(p.data), p.data.size // len(p.data)), []).append(p)
        self.buf = {shape: array_module(ps[0].data).zeros((len(ps),) + shape, ps[0].data.dtype)
                    for shape, ps in self.stacks.items()}               # [G, m, n] each
        self.momentum_of = {p.name: self.buf[shape][i]                  # [m, n] views
                            for shape, ps in self.stacks.items() for i, p in enumerate(ps)}

    def step(self, ok=None):
        ok = self._device_flag(ok)
        super().step(ok)                          # AdamW for the other parameters
        for shape in self.stacks:
            self._update_stack(shape, ok)

    def _update_stack(self, shape, ok):
        """Momentum, orthogonalization and update of the matrices of one shape [m, n]."""
        params, mu, xp = self.stacks[shape], self.momentum, array_module(self.buf[shape])
        g = xp.stack([p.grad.reshape(shape) for p in params])                  # [G, m, n]
        o = orthogonalize(_nesterov_momentum(self.buf[shape], g, ok, 1.0 - mu, mu), self.steps)
        for p, o_p in zip(params, o):
            _muon_apply(p.data.reshape(shape), o_p, ok, self.lr * 0.2 * math.sqrt(max(shape)),
                        self.lr * self.muon_decay)

    def state_dict(self):
        state = super().state_dict()
        for name, b in self.momentum_of.items():
            state[f"buf.{name}"] = to_host(b).copy()
        return state

    def load_state_dict(self, state):
        missing = [f"buf.{n}" for n in self.momentum_of if f"buf.{n}" not in state]
        if missing:
            raise ValueError(f"optimizer state is missing {len(missing)} entries (first: "
                             f"{missing[0]}); it was saved for a different model or optimizer")
        super().load_state_dict(state)
        for name, b in self.momentum_of.items():
            b[...] = to_device(state[f"buf.{name}"], array_module(b), b.dtype)
