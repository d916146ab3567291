"""What stops a training run safely, between two steps: a stop request (Ctrl-C,
SIGTERM), and a step whose loss or gradients hold NaN or Inf.

    with StopRequest() as stop:          # stop.signal: None, or the signal's name
        ...
    guard = NonFiniteGuard(model, steps_per_epoch)
    ok = guard.watch(step, loss, sum_sq) # each step, on the device: opt.step(ok)
    guard.check(checkpoint_path)         # when the loop reads the device anyway
"""

import math
import signal

import numpy as np

from .engine.backend import kernel, to_host
from .errors import RunFailed


class StopRequest:
    """Turns Ctrl-C (SIGINT) and SIGTERM into a flag that the loop reads between steps,
    so a step (and the optimizer's in-place update) is never cut in half. A second
    Ctrl-C stops at once; the checkpoint on disk is still whole (atomic writes)."""

    def __init__(self):
        self.signal, self._old = None, {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:       # not the main thread: leave signals as they are
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def reason(self):
        """What stopped the run, for its message: this process's signal, or (with several
        ranks) another rank's."""
        return self.signal or "a stop request to another rank"

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


@kernel
def _watch(xp, ok, loss, grad_sum_sq, step, bad_step, bad_loss):
    """-> (ok, bad_step, bad_loss, first): ok stays 1 while every step was finite; the
    first step that is not is remembered with its loss."""
    finite = xp.isfinite(loss) & xp.isfinite(grad_sum_sq)
    first = ok & ~finite
    return ok & finite, xp.where(first, step, bad_step), xp.where(first, loss, bad_loss), first


class NonFiniteGuard:
    """Finds the first step whose loss or gradients hold NaN or Inf, without making any
    step wait for the device: watch() keeps a device flag that the optimizer step takes
    (a bad step, and every one after it, changes no weight), and check() reads it when the
    loop prints or saves, naming the step and the tensors that went bad."""

    def __init__(self, model, steps_per_epoch):
        xp = model.xp
        self.model, self.steps_per_epoch = model, steps_per_epoch
        self.ok = xp.ones((), dtype=bool)
        self.bad_step = xp.zeros((), dtype=np.int64)
        self.bad_loss = xp.zeros((), dtype=model.dtype)
        self.bad_grads = xp.zeros_like(model.flat_grads)     # the first bad step's gradients

    def watch(self, step, loss, sum_sq):
        """After backward, before clipping, with sum_sq = grad_norm_squared(params):
        -> the flag for opt.step."""
        xp = self.model.xp
        self.ok, self.bad_step, self.bad_loss, first = _watch(
            self.ok, loss, sum_sq, step, self.bad_step, self.bad_loss)
        xp.copyto(self.bad_grads, self.model.flat_grads, where=first)
        return self.ok

    def check(self, last_path, world=None):
        """Raise RunFailed if a watched step was bad (one read of the device); with
        several ranks, every rank raises when any saw a bad step."""
        bad_here = not bool(self.ok)
        if not (world.any(bad_here) if world is not None else bad_here):
            return
        if not bad_here:
            raise RunFailed("another rank saw NaN or Inf in its loss; no weight changed "
                            "from that step on")
        step = int(self.bad_step)
        epoch, batch = (step - 1) // self.steps_per_epoch + 1, (step - 1) % self.steps_per_epoch + 1
        loss = float(self.bad_loss)
        if not math.isfinite(loss):
            bad = f"the loss is {loss}"
        else:
            grads = self.model.views(to_host(self.bad_grads))
            names = [k for k, g in grads.items() if not np.isfinite(g).all()]
            more = f" (and {len(names) - 1} more tensors)" if len(names) > 1 else ""
            bad = (f"the gradient of {names[-1]}{more} holds NaN or Inf" if names else
                   "the gradients' norm overflowed (every gradient is finite, their squares' sum is not)")
        kept = (f"the last good checkpoint {last_path} is intact" if last_path.exists()
                else "no checkpoint had been written yet")
        raise RunFailed(
            f"step {step} (epoch {epoch}, batch {batch}): {bad}. No weight changed from that "
            f"step on; {kept}. Lower --lr or set --clip-grad, then start again (or --resume)")
