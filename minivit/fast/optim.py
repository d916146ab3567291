"""The engine's Muon with its stacks shared among threads on the CPU: the same update of
each stack (engine/optim.py), the stacks split between threads, BLAS one thread each (a
two-thread BLAS call on matrices this small mostly waits, and slows the next step down)."""

import numpy as np

from ..engine import optim
from ..engine.backend import array_module
from .threads import cpu_threads, parallel_map


class Muon(optim.Muon):
    """optim.Muon; threads: on NumPy, how many threads share the stacks (default:
    threads.cpu_threads())."""

    def __init__(self, *args, threads=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.threads = cpu_threads() if threads is None else int(threads)

    def step(self, ok=None):
        shapes = list(self.stacks)
        if self.threads == 1 or array_module(self.buf[shapes[0]]) is not np:
            return super().step(ok)
        ok = self._device_flag(ok)
        optim.AdamW.step(self, ok)                # AdamW for the other parameters
        costs = sorted(shapes, key=lambda s: -len(self.stacks[s]) * min(s) ** 2 * max(s))
        parts = [costs[k::self.threads] for k in range(self.threads)]
        parallel_map(lambda part: [self._update_stack(s, ok) for s in part], parts)
