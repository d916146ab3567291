"""The engine's Muon (engine/optim.py) scheduled for the device it runs on.

- On the CPU (NumPy): the same update of each stack (one per matrix shape), the stacks
  split between threads, BLAS one thread each (a two-thread BLAS call on matrices this
  small mostly waits, and slows the next step down).
- On the GPU (CuPy), where a step costs what it launches: every matrix goes through ONE
  stacked Newton-Schulz iteration. Each matrix is laid wide (a tall one transposed, so
  X X^T is the smaller Gram matrix) and zero-padded to the largest rows and columns into
  one stack [S, R, C]; padding stays exactly zero through the iteration (its rows and
  columns of X X^T are zero), so each matrix gets the engine's update (the zeros change
  only the products' rounding). The gradients come in with one gather from the model's
  flat gradient, the updates go out with one gather into the flat layout, and AdamW
  updates the other parameters on the whole flat buffers at once: 38 launches a step
  whatever the number of matrices (the engine's Muon, AdamW's runs between the matrices
  included: 313 for the hybrid preset's 25). tests/fast/test_fast_optim.py checks it
  against the engine's Muon.
"""

import math

import numpy as np

from ..engine import optim
from ..engine.backend import array_module, kernel, to_device
from .threads import cpu_threads, parallel_map


@kernel
def stacked_nesterov(xp, buf, g, valid, ok, one_minus_mu, mu):
    """optim._nesterov_momentum on the padded stack (g gathered, its padding masked out)
    -> (N, N^2), N = g + mu buf the Nesterov direction, N^2 for its Frobenius norm."""
    g = xp.where(valid, g, 0.0)
    buf += xp.where(ok, g - one_minus_mu * buf, 0.0)               # buf = mu buf + g
    n = g + mu * buf
    return n, n * n


@kernel
def frobenius_normalize(xp, n, sum_sq):
    """X = N / (||N||_F + 1e-7), as optim.orthogonalize starts."""
    return n / (xp.sqrt(sum_sq) + 1e-7)


@kernel
def newton_schulz_polynomial(xp, gram, gram_squared, b, c):
    """b A + c A^2, with A = X X^T."""
    return b * gram + c * gram_squared


@kernel
def newton_schulz_step(xp, x, bx, a):
    """a X + (b A + c A^2) X, the product given."""
    return a * x + bx


@kernel
def muon_apply_flat(xp, w, o, scale, ok, lr, shrink):
    """optim._muon_apply on the flat layout: w = w - lr wd w - lr scale o (when ok), where
    scale = 0.2 sqrt(max(m, n)) of the matrix the element belongs to, 0 off the matrices
    (left as they are)."""
    w -= xp.where(ok & (scale > 0), shrink * w + lr * scale * o, 0.0)


def _owner(params):
    """The model whose flat buffers hold every param, or None."""
    owner = getattr(params[0], "owner", None)
    if owner is None or any(getattr(p, "owner", None) is not owner for p in params):
        return None
    return owner


class MatrixStack:
    """Where each matrix of a Muon sits in one padded stack [S, R, C]: gather (the flat
    index of each stack entry in the model's flat buffers; padding points at 0) and valid
    (False on padding), scatter (for each flat element of [lo, hi), its index in the stack)
    and scale (0.2 sqrt(max(m, n)) of its matrix, 0 off the matrices). Built on the host
    once, then moved to the device."""

    def __init__(self, params, shapes, xp, dtype):
        wide = [(m, n) if m <= n else (n, m) for m, n in shapes]          # X, laid wide
        R, C = max(r for r, _ in wide), max(c for _, c in wide)
        S = len(params)
        self.shape = (S, R, C)
        gather, valid = np.zeros(self.shape, np.int64), np.zeros(self.shape, bool)
        slot = np.arange(S * R * C).reshape(self.shape)
        self.lo = min(p.offset for p in params)
        self.hi = max(p.offset + p.data.size for p in params)
        scatter, scale = np.zeros(self.hi - self.lo, np.int64), np.zeros(self.hi - self.lo)
        self.views = []                # (rows, cols, transposed) of each entry
        for i, (p, (m, n), (r, c)) in enumerate(zip(params, shapes, wide)):
            index = p.offset + np.arange(m * n).reshape(m, n)              # p's flat indices
            transposed = m > n
            gather[i, :r, :c] = index.T if transposed else index
            valid[i, :r, :c] = True
            where = slot[i, :r, :c]
            at = slice(p.offset - self.lo, p.offset - self.lo + m * n)
            scatter[at] = (where.T if transposed else where).reshape(-1)
            scale[at] = 0.2 * math.sqrt(max(m, n))
            self.views.append((r, c, transposed))
        self.gather, self.valid = to_device(gather, xp), to_device(valid, xp)
        self.scatter, self.scale = to_device(scatter, xp), to_device(scale, xp, dtype)

    def entry(self, stack, i):
        """Entry i of a [S, R, C] stack as its matrix [m, n] (a view)."""
        r, c, transposed = self.views[i]
        view = stack[i, :r, :c]
        return view.T if transposed else view


class Muon(optim.Muon):
    """optim.Muon. threads: on NumPy, how many threads share the stacks (default:
    threads.cpu_threads()). stacked: every matrix through one padded stack (MatrixStack),
    for parameters of one model; default on CuPy only (the CPU keeps the engine's
    stacks, one per shape)."""

    def __init__(self, matrices, others, *args, threads=None, stacked=None, **kwargs):
        matrices = list(matrices)
        super().__init__(matrices, others, *args, **kwargs)
        self.threads = cpu_threads() if threads is None else int(threads)
        xp = array_module(matrices[0].data)
        owner = _owner(matrices)
        self.stacked = (xp is not np if stacked is None else bool(stacked)) and owner is not None
        if not self.stacked:
            return
        params = [p for ps in self.stacks.values() for p in ps]            # the engine's order
        shapes = [shape for shape, ps in self.stacks.items() for _ in ps]
        self.owner = owner
        self.matrices = MatrixStack(params, shapes, xp, owner.flat_params.dtype)
        self.buf = {"stack": xp.zeros(self.matrices.shape, owner.flat_params.dtype)}
        self.momentum_of = {p.name: self.matrices.entry(self.buf["stack"], i)
                            for i, p in enumerate(params)}
        self._adam_mask = None
        others = [p for g in self.param_groups for p in g["params"]]
        if _owner(others + matrices) is owner:
            self._whole_buffer_adamw(owner, xp)

    def _whole_buffer_adamw(self, owner, xp):
        """AdamW in one kernel on the model's whole flat buffers (instead of one per run of
        AdamW's parameters between the matrices), its ok masked to AdamW's parameters: the
        matrices' entries of m, v and w stay as they are."""
        size, dtype = owner.flat_params.size, owner.flat_params.dtype
        m, v = xp.zeros(size, dtype), xp.zeros(size, dtype)
        decay, mask = np.zeros(size), np.zeros(size, bool)
        for group in self.param_groups:
            for p in group["params"]:
                at = slice(p.offset, p.offset + p.data.size)
                decay[at], mask[at] = group["weight_decay"], True
                self.m[p.name] = m[at].reshape(p.data.shape)
                self.v[p.name] = v[at].reshape(p.data.shape)
        decay = float(decay[0]) if len(set(decay.tolist())) == 1 else to_device(decay, xp, dtype)
        self._segments = [(owner.flat_params, owner.flat_grads, m, v, decay)]
        self._adam_mask = to_device(mask, xp)

    def step(self, ok=None):
        if self.stacked:
            return self._stacked_step(self._device_flag(ok))
        shapes = list(self.stacks)
        if self.threads == 1 or array_module(self.buf[shapes[0]]) is not np:
            return super().step(ok)
        ok = self._device_flag(ok)
        optim.AdamW.step(self, ok)                # AdamW for the other parameters
        costs = sorted(shapes, key=lambda s: -len(self.stacks[s]) * min(s) ** 2 * max(s))
        parts = [costs[k::self.threads] for k in range(self.threads)]
        parallel_map(lambda part: [self._update_stack(s, ok) for s in part], parts)

    def _stacked_step(self, ok):
        """AdamW, then every matrix's momentum, orthogonalization and update through the
        one stack: optim.Muon.step's numbers (the padding's zeros change only rounding)."""
        optim.AdamW.step(self, ok if self._adam_mask is None else ok & self._adam_mask)
        s, mu, xp = self.matrices, self.momentum, array_module(self.buf["stack"])
        g = xp.take(self.owner.flat_grads, s.gather)                               # [S, R, C]
        n, n2 = stacked_nesterov(self.buf["stack"], g, s.valid, ok, 1.0 - mu, mu)
        x = frobenius_normalize(n, n2.sum(axis=(-2, -1), keepdims=True))
        a, b, c = optim.NEWTON_SCHULZ
        for _ in range(self.steps):                   # optim.orthogonalize's iteration
            gram = x @ x.swapaxes(-2, -1)                                          # [S, R, R]
            x = newton_schulz_step(x, newton_schulz_polynomial(gram, gram @ gram, b, c) @ x, a)
        o = xp.take(x.reshape(-1), s.scatter)                  # the flat layout of [lo, hi)
        muon_apply_flat(self.owner.flat_params[s.lo:s.hi], o, s.scale, ok, self.lr,
                        self.lr * self.muon_decay)
