"""What the head looks at: per-head attention maps and attention rollout.

    logits, maps, readout = model.attention(x)   # maps[l]: [B, heads, N, N]
    heads = reader_attention(maps[-1], readout)  # [B, heads, P]: the head's reader -> patches
    roll = rollout(maps, readout)                # [B, P]: through every layer

The head reads the class token (readout None: pool "cls"), or a weighted sum of the patch
tokens' outputs, readout [B, P] (pool "mean": 1/P each; pool "seq": the learned softmax).
The maps follow that reader: the class token's attention row, or the patch tokens' rows
mixed with the readout's weights.

Rollout (Abnar & Zuidema, 2020) follows attention through the residual stream: each
block's head-averaged attention A is mixed with the identity for the skip connection,
A' = (A + I) / 2 (rows still sum to one), and the blocks are chained, R = A'_L ... A'_1.
The reader's row of R, over the patch tokens, says how much each patch fed what the head
reads.
"""

import numpy as np

from .engine.backend import array_module, to_host
from .files import atomic_write


def reader_row(a, readout=None):
    """a [B, ..., N, M] -> [B, ..., M]: row 0, the class token's (readout None), or the
    patch tokens' rows 1..N-1 weighted by readout [B, P]."""
    if readout is None:
        return a[..., 0, :]
    w = readout.reshape(len(readout), *([1] * (a.ndim - 3)), 1, -1)          # [B, 1.., 1, P]
    return (w @ a[..., 1:, :])[..., 0, :]


def reader_attention(a, readout=None):
    """a [B, heads, N, N] -> [B, heads, P]: the attention of what the head reads (the class
    token, or the readout's mix of patch tokens) to each patch."""
    return reader_row(a, readout)[..., 1:]


def rollout(maps, readout=None):
    """maps: list of [B, heads, N, N] (first block first) -> [B, P], rows summing to <= 1;
    readout: as in reader_attention."""
    xp = array_module(maps[0])
    B, _, N, _ = maps[0].shape
    eye = xp.eye(N, dtype=maps[0].dtype)
    R = xp.broadcast_to(eye, (B, N, N))
    for a in maps:
        A = 0.5 * (a.mean(axis=1) + eye)                 # [B, N, N], rows sum to one
        A = A / A.sum(axis=-1, keepdims=True)
        R = A @ R
    return reader_row(R, readout)[:, 1:]


def to_grid(weights):
    """[..., P] -> [..., g, g] on the patch grid (P = g * g)."""
    P = weights.shape[-1]
    g = int(round(P ** 0.5))
    if g * g != P:
        raise ValueError(f"{P} patches do not form a square grid")
    return weights.reshape(*weights.shape[:-1], g, g)


def draw(image, head_maps, roll_map, path, title="", readout_map=None):
    """Draw one image [3, H, W] uint8 with its per-head maps [heads, g, g], rollout [g, g]
    and, when given, the head's readout [g, g] laid over it; writes a PNG (matplotlib
    needed). Returns path."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = to_host(image).transpose(1, 2, 0)
    head_maps, roll_map = to_host(head_maps), to_host(roll_map)
    H, W = image.shape[:2]
    panels = [("image", None)] + [(f"head {h}", m) for h, m in enumerate(head_maps)] + \
             [("rollout", roll_map)]
    if readout_map is not None:
        panels.append(("pooling weights", to_host(readout_map)))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.6))
    for ax, (name, m) in zip(np.atleast_1d(axes), panels):
        ax.imshow(image)
        if m is not None:
            ax.imshow(m, cmap="inferno", alpha=0.6, extent=(-0.5, W - 0.5, H - 0.5, -0.5),
                      interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path
