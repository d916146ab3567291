"""Adam and AdamW (PyTorch's update rules), global-norm gradient clipping and a
warmup + cosine learning-rate schedule.

An optimizer takes ``model.parameters()`` (a list of Param with .name, .data, .grad) or
parameter groups as in PyTorch: ``[{"params": [...], "weight_decay": 0.0}, {"params": [...]}]``
where a group's own weight_decay overrides the optimizer's. Updates happen in place on
``param.data``, so the model sees them at once.
"""

import contextlib
import math

from .backend import array_module, to_device, to_host


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


class Adam:
    """Adam (Kingma & Ba), step for step as torch.optim.Adam.

    For each parameter w with gradient g, at step t = 1, 2, ...:
        g   = g + wd w                       (Adam: L2 penalty added to the gradient)
        m   = b1 m + (1 - b1) g
        v   = b2 v + (1 - b2) g^2
        w   = w - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
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
        self.t = 0
        self.m = {}
        self.v = {}
        for group in self.param_groups:
            for p in group["params"]:
                xp = array_module(p.data)
                self.m[p.name] = xp.zeros_like(p.data)
                self.v[p.name] = xp.zeros_like(p.data)

    def step(self):
        """One update of every parameter from its .grad (clip or scale grads before)."""
        self.t += 1
        b1, b2 = self.betas
        lr = self.lr
        step_size = lr / (1.0 - b1 ** self.t)
        bias_correction2_sqrt = math.sqrt(1.0 - b2 ** self.t)
        for group in self.param_groups:
            wd = group["weight_decay"]
            for p in group["params"]:
                w, g, m, v = p.data, p.grad, self.m[p.name], self.v[p.name]
                if wd and self.decoupled:
                    w *= 1.0 - lr * wd                       # AdamW: decay the weight itself
                elif wd:
                    g = g + wd * w                           # Adam: L2 term in the gradient
                m += (1.0 - b1) * (g - m)                    # = b1 m + (1 - b1) g  (torch: lerp)
                v *= b2
                v += ((1.0 - b2) * g) * g                   # torch: addcmul
                denom = array_module(v).sqrt(v)
                denom /= bias_correction2_sqrt
                denom += self.eps
                w -= (step_size * m) / denom

    def zero_grad(self):
        for group in self.param_groups:
            for p in group["params"]:
                p.grad.fill(0)

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


def clip_grad_norm(params, max_norm):
    """Scale every gradient by min(1, max_norm / (||g|| + 1e-6)), ||g|| the norm of all
    gradients together (as torch.nn.utils.clip_grad_norm_). Returns ||g|| before clipping
    as a 0-d array (no device sync). params: Params (their .grad is used) or arrays."""
    grads = [p.grad if hasattr(p, "grad") else p for p in params]
    xp = array_module(grads[0])
    total = xp.sqrt(sum((g * g).sum() for g in grads))
    coef = xp.minimum(max_norm / (total + 1e-6), 1.0).astype(grads[0].dtype)
    for g in grads:
        g *= coef
    return total


def warmup_cosine(step, total_steps, base_lr, warmup_steps=0, min_lr=0.0):
    """The learning rate for step (0-based): linear warmup from base_lr/warmup_steps to
    base_lr over warmup_steps steps, then a half cosine from base_lr down to min_lr at
    total_steps (and min_lr after)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


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
        diff = self.model.flat_params - self.shadow
        diff *= 1.0 - d
        self.shadow += diff

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
