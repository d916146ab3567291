"""Random generators for training, one named stream per use.

Every random draw of a training run comes from a generator seeded with
(seed, epoch, batch, stream): any batch of any epoch can be rebuilt on its own, which is
what lets an interrupted run resume exactly, and lets several processes agree on a batch
without talking. Each use has its own stream, so no two uses ever share random numbers
(two uses seeded alike would draw correlated values).

    rng = seeds.generator(cfg.seed, epoch, i, "mix")
"""

import numpy as np

STREAMS = ("shuffle", "crop_flip", "randaugment", "erase", "mix", "drop_path", "flip")


def generator(seed, epoch, batch, stream):
    """The NumPy generator of one stream for batch `batch` of epoch `epoch` (the epoch's
    shuffle uses batch 0)."""
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}: use one of {', '.join(STREAMS)}")
    return np.random.default_rng([seed, epoch, batch, STREAMS.index(stream)])
