"""Softmax cross-entropy, the training loss, with its gradient."""

import numpy as np

from . import kernels
from .backend import array_module


def check_soft_targets(targets):
    """Raise ValueError unless every row of host soft targets [B, K] is a probability
    distribution: finite entries >= 0 summing to 1 (to 1e-4)."""
    t = np.asarray(targets, dtype=np.float64)
    if not np.isfinite(t).all():
        raise ValueError("soft targets contain NaN or Inf: each row must be class probabilities")
    if t.size and t.min() < 0:
        row = int(np.argwhere(t < 0)[0, 0])
        raise ValueError(f"soft targets must be probabilities, but row {row} has a negative entry "
                         f"({t[row].min():.4g}): build them from one-hot rows mixed with weights in [0, 1]")
    sums = t.sum(axis=1)
    bad = np.abs(sums - 1.0) > 1e-4
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"each row of soft targets must sum to 1 (class probabilities), but row "
                         f"{row} sums to {sums[row]:.6g}: divide each row by its sum, "
                         f"targets / targets.sum(axis=1, keepdims=True)")


def cross_entropy(logits, labels, label_smoothing=0.0):
    """Mean softmax cross-entropy over the batch, as torch.nn.functional.cross_entropy.

    logits [B, K], labels [B] (ints in [0, K)) or soft targets [B, K] (float rows of
    probabilities, as mixup and cutmix make) -> (loss, dlogits): loss is a 0-d array on
    the logits' backend (float(loss) reads it), dlogits [B, K] is dloss/dlogits.

    Forward, with log-sum-exp for stability:
        log p   = z - max z - log sum_k exp(z_k - max z)
        target  q = (1 - eps) onehot(label) + eps / K       (eps: label_smoothing;
                                                             a soft target replaces onehot)
        loss    = -(1/B) sum_b sum_k q_bk log p_bk
    Backward: d/dz_j of -sum_k q_k log p_k = -q_j + (sum_k q_k) p_j = p_j - q_j, so
        dlogits = (p - q) / B          (with sum_k q_k = 1)

    Labels on the host are checked (type, shape, range; soft targets: each entry >= 0 and
    each row summing to 1); labels already on the GPU are checked for type and shape only,
    since reading their values would wait for the GPU. For soft targets the gradient uses
    (sum_k q_k) p_j - q_j, so dlogits is the gradient of the returned loss even for rows
    that were not checked (one more sum over each row, no host read).

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
    host_labels = labels if array_module(labels) is np else None
    labels = xp.asarray(labels)
    if labels.ndim == 2 and labels.dtype.kind == "f":                # soft targets
        if labels.shape != (B, K):
            raise ValueError(f"soft targets must have the logits' shape {(B, K)}, got "
                             f"{tuple(labels.shape)}")
        if host_labels is not None:
            check_soft_targets(host_labels)
        q = labels.astype(logits.dtype) * (1.0 - label_smoothing) + label_smoothing / K
        q_sum = q.sum(axis=1, keepdims=True)                          # [B, 1]: 1 if checked
    else:
        if labels.dtype.kind not in "iu":
            raise TypeError(f"labels must be integer class indices, got {labels.dtype}; "
                            f"convert them, e.g. labels.astype(int) (or pass soft targets [B, K])")
        if labels.shape != (B,):
            raise ValueError(f"labels must have shape ({B},), one per logits row, got "
                             f"{tuple(labels.shape)}")
        if host_labels is not None and B:
            lo, hi = int(np.min(host_labels)), int(np.max(host_labels))
            if lo < 0 or hi >= K:
                raise ValueError(f"labels must lie in [0, {K}), got values from {lo} to {hi}")
        scalar = logits.dtype.type       # the run's dtype: fused, two bare Python floats are float16
        q = kernels.smoothed_onehot(labels[:, None], xp.arange(K),           # [B, K]
                                    scalar(1.0 - label_smoothing + label_smoothing / K),
                                    scalar(label_smoothing / K))
        q_sum = 1.0                                                   # sum_k q_k = 1
    t, e = kernels.shifted_exp(logits, logits.max(axis=-1, keepdims=True))  # [B, K]
    dlogits, terms = kernels.softmax_cross_entropy(t, e, e.sum(axis=-1, keepdims=True), q, q_sum,
                                                   1.0 / B)
    return terms.sum(), dlogits
