"""Softmax cross-entropy, the training loss, with its gradient.

    loss, dlogits = cross_entropy(logits, labels, label_smoothing=0.1)
"""

import numpy as np

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

    Forward, with log-sum-exp for stability (t = z - max z, so exp never overflows):
        log p   = t - log sum_k exp(t_k)
        target  q = (1 - eps) onehot(label) + eps / K       (eps: label_smoothing;
                                                             a soft target replaces onehot)
        loss    = -(1/B) sum_b sum_k q_bk log p_bk
    Backward: d/dz_j of -sum_k q_k log p_k = -q_j + (sum_k q_k) p_j = p_j - q_j, so
        dlogits = (p - q) / B          (with sum_k q_k = 1)

    For soft targets the gradient keeps (sum_k q_k) p_j - q_j, so dlogits is the gradient
    of the returned loss even for rows on the GPU that were not checked.
    """
    xp = array_module(logits)
    labels, soft = check_labels(logits, labels, label_smoothing)
    B, K = logits.shape
    if soft:
        q = labels.astype(logits.dtype) * (1.0 - label_smoothing) + label_smoothing / K  # [B, K]
    else:
        q = xp.full((B, K), label_smoothing / K, dtype=logits.dtype)                   # [B, K]
        q[xp.arange(B), labels] += 1.0 - label_smoothing
    t = logits - logits.max(axis=-1, keepdims=True)                  # [B, K]
    log_p = t - xp.log(xp.exp(t).sum(axis=-1, keepdims=True))        # [B, K]
    loss = -(q * log_p).sum() / B
    dlogits = (q.sum(axis=1, keepdims=True) * xp.exp(log_p) - q) / B  # [B, K]
    return loss, dlogits


def check_labels(logits, labels, label_smoothing):
    """Check cross_entropy's arguments -> (labels on the logits' backend, soft): soft is
    True for soft targets [B, K]. Labels on the host are checked in full (type, shape,
    range; soft targets: each entry >= 0 and each row summing to 1); labels already on
    the GPU for type and shape only, since reading their values would wait for the GPU."""
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
        return labels, True
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
    return labels, False
