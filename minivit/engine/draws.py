"""The random draws of one training step that the network itself takes: stochastic
depth's masks today (a future one, such as dropout's, joins them here). The engine's ViT
and the fast path both read them, so the two compute the same step.

    draws = StepDraws.sample(model.config, batch, rng, model.xp, model.dtype)
    logits = model.forward(images, draws=draws)        # no draws: evaluation
"""

from dataclasses import dataclass

import numpy as np

from .backend import to_device


@dataclass
class StepDraws:
    """drop_path: one entry per block, None (the block keeps both branches) or its masks
    (k1, k2), each [B, 1, 1]: 0 where the image skips the branch, else 1/(1 - rate)."""
    drop_path: list

    @classmethod
    def none(cls, depth):
        """No random draws: evaluation, or a model without stochastic depth."""
        return cls(drop_path=[None] * depth)

    @classmethod
    def sample(cls, config, batch, rng, xp=np, dtype=np.float32):
        """The draws of a training step of `batch` images from the NumPy Generator rng
        (None: no draws). Stochastic depth: each image keeps a branch with probability
        1 - rate, scaled by 1/(1 - rate) so the expected output is unchanged; block i's
        rate is drop_path * i / (depth - 1)."""
        depth = config.depth
        rates = [config.drop_path * i / max(1, depth - 1) for i in range(depth)]
        if rng is None or not any(rates):
            return cls.none(depth)
        kept = rng.random((depth, 2, batch)) >= np.array(rates)[:, None, None]
        scale = 1.0 / (1.0 - np.array(rates))[:, None, None]
        masks = to_device(kept * scale, xp, dtype)[..., None, None]    # [depth, 2, B, 1, 1]
        return cls(drop_path=[None if rate == 0.0 else (masks[i, 0], masks[i, 1])
                              for i, rate in enumerate(rates)])

    def rows(self, s):
        """The draws of the batch rows s (a slice): a shard's, or a rank's."""
        return StepDraws(drop_path=[None if k is None else (k[0][s], k[1][s])
                                    for k in self.drop_path])
