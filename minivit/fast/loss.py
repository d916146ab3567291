"""Softmax cross-entropy in a few fused kernels: engine/loss.py's cross_entropy, the
same arguments, checks and numbers to rounding, in fewer launches on the GPU:

    t = z - max z and e = exp t in one kernel; with S = sum_k e_k, p = e / S and
    log p = t - log S, dlogits = (q_sum p - q) / B and the loss terms -q log p / B in one
    (with class labels, the targets q made inside it too).
"""

import numpy as np

from ..engine.backend import array_module, kernel
from ..engine.loss import check_labels
from .kernels import constant


@kernel
def smoothed_onehot(xp, labels, classes, on, off):
    """Targets [B, K]: `on` where the label is the class, else `off` (label smoothing)."""
    return xp.where(labels == classes, on, off)


@kernel
def shifted_exp(xp, z, z_max):
    """-> (t, exp t) with t = z - max z (exp never overflows)."""
    t = z - z_max
    return t, xp.exp(t)


@kernel
def softmax_cross_entropy(xp, t, e, e_sum, q, q_sum, inv_b):
    """-> ((q_sum p - q) / B, -q log p / B) with p = e / e_sum, log p = t - log e_sum and
    q_sum the target rows' sums (1 for probabilities)."""
    return (q_sum * (e / e_sum) - q) * inv_b, -(q * (t - xp.log(e_sum))) * inv_b


@kernel
def softmax_cross_entropy_labels(xp, t, e, e_sum, labels, classes, on, off, inv_b):
    """softmax_cross_entropy with the targets of class labels, smoothed_onehot's."""
    q = smoothed_onehot.body(xp, labels, classes, on, off)
    return softmax_cross_entropy.body(xp, t, e, e_sum, q, 1.0, inv_b)


def cross_entropy(logits, labels, label_smoothing=0.0):
    """engine.loss.cross_entropy, fused -> (loss 0-d, dlogits [B, K])."""
    xp = array_module(logits)
    labels, soft = check_labels(logits, labels, label_smoothing)
    B, K = logits.shape
    t, e = shifted_exp(logits, logits.max(axis=-1, keepdims=True))   # [B, K]
    if soft:
        q = labels.astype(logits.dtype) * (1.0 - label_smoothing) + label_smoothing / K
        q_sum = q.sum(axis=1, keepdims=True)                          # [B, 1]: 1 if checked
        dlogits, terms = softmax_cross_entropy(t, e, e.sum(axis=-1, keepdims=True), q, q_sum, 1.0 / B)
    else:                                                             # q [B, K], its rows sum to 1
        scalar = logits.dtype.type       # the run's dtype: fused, two bare Python floats are float16
        classes = constant(xp, ("arange", K), lambda: np.arange(K))    # [K], made once
        dlogits, terms = softmax_cross_entropy_labels(
            t, e, e.sum(axis=-1, keepdims=True), labels[:, None], classes,
            scalar(1.0 - label_smoothing + label_smoothing / K), scalar(label_smoothing / K), 1.0 / B)
    return terms.sum(), dlogits
