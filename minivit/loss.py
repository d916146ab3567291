"""Softmax cross-entropy, the training loss, with its gradient."""

import numpy as np

from . import kernels
from .backend import array_module


def log_softmax(z):
    """log p_k = z_k - m - log sum_j exp(z_j - m) over the last axis, m = max_k z_k (so
    exp never overflows)."""
    xp = array_module(z)
    z = z - z.max(axis=-1, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=-1, keepdims=True))


def cross_entropy(logits, labels, label_smoothing=0.0):
    """Mean softmax cross-entropy over the batch, as torch.nn.functional.cross_entropy.

    logits [B, K], labels [B] (ints in [0, K)) or soft targets [B, K] (float rows of
    probabilities, as mixup and cutmix make) -> (loss, dlogits): loss is a 0-d array on
    the logits' backend (float(loss) reads it), dlogits [B, K] is dloss/dlogits.

    Forward, with log-sum-exp for stability:
        log p   = log_softmax(z)
        target  q = (1 - eps) onehot(label) + eps / K       (eps: label_smoothing;
                                                             a soft target replaces onehot)
        loss    = -(1/B) sum_b sum_k q_bk log p_bk
    Backward: d/dz_j of -sum_k q_k log p_k = -q_j + (sum_k q_k) p_j = p_j - q_j, so
        dlogits = (p - q) / B

    Labels on the host are checked (type, shape, range); labels already on the GPU are
    checked for type and shape only, since reading their values would wait for the GPU.

    As computed (a few kernels on the GPU): t = z - max z and e = exp t in one kernel,
    then with S = sum_k e_k: p = e / S, log p = t - log S, and the loss is the sum of
    -q log p / B over the batch.
    """
    xp = array_module(logits)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if logits.ndim != 2:
        raise ValueError(f"logits must be [B, num_classes], got shape {tuple(logits.shape)}")
    B, K = logits.shape
    on_host = array_module(labels) is np
    labels = xp.asarray(labels)
    if labels.ndim == 2 and labels.dtype.kind == "f":                # soft targets
        if labels.shape != (B, K):
            raise ValueError(f"soft targets must have the logits' shape {(B, K)}, got "
                             f"{tuple(labels.shape)}")
        q = labels.astype(logits.dtype) * (1.0 - label_smoothing) + label_smoothing / K
    else:
        if labels.dtype.kind not in "iu":
            raise TypeError(f"labels must be integer class indices, got {labels.dtype}; "
                            f"convert them, e.g. labels.astype(int) (or pass soft targets [B, K])")
        if labels.shape != (B,):
            raise ValueError(f"labels must have shape ({B},), one per logits row, got "
                             f"{tuple(labels.shape)}")
        if on_host and B and (int(labels.min()) < 0 or int(labels.max()) >= K):
            raise ValueError(f"labels must lie in [0, {K}), got values from {int(labels.min())} "
                             f"to {int(labels.max())}")
        scalar = logits.dtype.type       # the run's dtype: fused, two bare Python floats are float16
        q = kernels.smoothed_onehot(labels[:, None], xp.arange(K),           # [B, K]
                                    scalar(1.0 - label_smoothing + label_smoothing / K),
                                    scalar(label_smoothing / K))
    t, e = kernels.shifted_exp(logits, logits.max(axis=-1, keepdims=True))  # [B, K]
    dlogits, terms = kernels.softmax_cross_entropy(t, e, e.sum(axis=-1, keepdims=True), q, 1.0 / B)
    return terms.sum(), dlogits
