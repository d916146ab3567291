"""Softmax cross-entropy, the training loss, with its gradient."""

from .backend import array_module


def cross_entropy(logits, labels, label_smoothing=0.0):
    """Mean softmax cross-entropy over the batch, as torch.nn.functional.cross_entropy.

    logits [B, K], labels [B] (ints in [0, K)) -> (loss, dlogits): loss is a 0-d array
    on the logits' backend (float(loss) reads it), dlogits [B, K] is dloss/dlogits.

    Forward, with log-sum-exp for stability (m = max_k z_k):
        log p_k = z_k - m - log sum_j exp(z_j - m)
        target  q = (1 - eps) onehot(label) + eps / K       (eps: label_smoothing)
        loss    = -(1/B) sum_b sum_k q_bk log p_bk
    Backward: d/dz_j of -sum_k q_k log p_k = -q_j + (sum_k q_k) p_j = p_j - q_j, so
        dlogits = (p - q) / B
    """
    xp = array_module(logits)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    B, K = logits.shape
    labels = xp.asarray(labels)
    rows = xp.arange(B)
    z = logits - logits.max(axis=1, keepdims=True)                    # [B, K]
    logp = z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))          # [B, K]
    nll = -logp[rows, labels]                                        # [B]
    if label_smoothing:
        per_row = (1.0 - label_smoothing) * nll - label_smoothing * logp.mean(axis=1)
    else:
        per_row = nll
    loss = per_row.mean()
    dlogits = xp.exp(logp)                                           # p  [B, K]
    dlogits[rows, labels] -= 1.0 - label_smoothing
    if label_smoothing:
        dlogits -= label_smoothing / K
    dlogits /= B
    return loss, dlogits
