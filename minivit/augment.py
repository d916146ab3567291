"""Data augmentation, as whole-batch array code on any backend.

Each function takes a batch [B, C, H, W] on NumPy or CuPy and a host NumPy generator
for its random draws (so NumPy and CuPy runs with the same seed see the same draws):

    random_crop_flip   pad, cut a random window, mirror about half
    random_erase       blank a random box in some images
    rand_augment       RandAugment: N of 13 operations per image at strength M
    mix_batch          mixup or CutMix with soft targets
    regularize         the batch-level ones a TrainConfig asks for, as training runs them
"""

import numpy as np

from . import seeds
from .engine.backend import array_module, kernel


CROP_PADDING = 4                   # random_crop_flip: zeros around each image before the cut
ERASE_AREA = (0.02, 1 / 3)         # random_erase: the box's share of the image, drawn in this range
ERASE_ASPECT = (0.3, 3.3)          # ... and its height / width, log-uniform in this range


def random_crop_flip(x, rng, mirror=None):
    """Augment a batch x [B, C, H, W] at once: pad every image by CROP_PADDING zeros, cut a
    random H x W window from each, and mirror about half of them left-right (or the images
    a host bool array mirror [B] names: alternating_mirror).
    Offsets and flips come from the host generator rng; the host turns them into the
    rows and columns each image reads (a mirrored image reads its columns backwards), so
    the device gets one small upload and one gather."""
    xp = array_module(x)
    B, C, H, W = x.shape
    pad = CROP_PADDING
    dy = rng.integers(0, 2 * pad + 1, B)
    dx = rng.integers(0, 2 * pad + 1, B)
    mirror = rng.random(B) < 0.5 if mirror is None else np.asarray(mirror, dtype=bool)   # [B]
    rows = dy[:, None] + np.arange(H)                                        # [B, H]
    cols = dx[:, None] + np.where(mirror[:, None], np.arange(W)[::-1], np.arange(W))  # [B, W]
    index = xp.asarray(np.concatenate([np.arange(B), np.arange(C), rows.ravel(), cols.ravel()]))
    b, c = index[:B], index[B:B + C]                                         # one upload, four views
    rows, cols = index[B + C:B + C + B * H].reshape(B, H), index[B + C + B * H:].reshape(B, W)
    padded = xp.zeros((B, C, H + 2 * pad, W + 2 * pad), dtype=x.dtype)
    padded[:, :, pad:pad + H, pad:pad + W] = x
    return padded[b[:, None, None, None], c[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]


def alternating_mirror(seed, epoch, n):
    """Which of n training images epoch (1-based) mirrors under airbench's alternating
    flip -> host bool [n], by position in the training set. Epoch 1 mirrors a random half
    (one draw per image from the "flip" stream of the seed); every even epoch mirrors the
    other half and every odd epoch that half again, so any two epochs in a row show every
    image both ways."""
    first = seeds.generator(seed, 0, 0, "flip").random(n) < 0.5
    return first ^ (epoch % 2 == 0)


def random_erase(x, rng, prob=0.25):
    """Random erasing on a whole batch: with probability prob an image gets one random
    rectangle (area share and aspect ratio drawn from ERASE_AREA and ERASE_ASPECT) set to
    0, the data set's mean after normalization. Boxes come from the host generator rng."""
    xp = array_module(x)
    B, C, H, W = x.shape
    frac = rng.uniform(*ERASE_AREA, B)
    ratio = np.exp(rng.uniform(np.log(ERASE_ASPECT[0]), np.log(ERASE_ASPECT[1]), B))
    h = np.clip(np.round(np.sqrt(frac * H * W * ratio)), 1, H).astype(np.int64)
    w = np.clip(np.round(np.sqrt(frac * H * W / ratio)), 1, W).astype(np.int64)
    y0 = (rng.random(B) * (H - h + 1)).astype(np.int64)
    x0 = (rng.random(B) * (W - w + 1)).astype(np.int64)
    erase = rng.random(B) < prob
    rows = np.arange(H)[None, :]
    cols = np.arange(W)[None, :]
    in_rows = (rows >= y0[:, None]) & (rows < (y0 + h)[:, None])            # [B, H]
    in_cols = (cols >= x0[:, None]) & (cols < (x0 + w)[:, None])            # [B, W]
    mask = in_rows[:, :, None] & in_cols[:, None, :] & erase[:, None, None]  # [B, H, W]
    return xp.where(xp.asarray(mask)[:, None], xp.zeros((), dtype=x.dtype), x)


# ------------------------------------------------------- RandAugment, on a whole batch
#
# RandAugment (Cubuk et al., 2020): every image gets `num_ops` operations in a row, each
# chosen uniformly from the list below and applied at a shared strength `magnitude`
# (0..10). Each operation is whole-batch array code on images in [0, 1]: the images that
# drew it are gathered, transformed together and put back. Geometric operations are one
# affine resampling (bilinear, the outside filled with mid-gray, as the reference
# implementation fills with 128).

def _blend(x, other, factor):
    """other + factor (x - other), clipped to [0, 1]: PIL's ImageEnhance. factor [B]."""
    xp = array_module(x)
    return xp.clip(other + factor[:, None, None, None] * (x - other), 0.0, 1.0)


def _gray(x):
    """ITU-R 601 luma [B, 1, H, W], PIL's convert('L')."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


@kernel
def bilinear_tap(xp, r, c, rr, cc, r_max, c_max, width, plane, fill):
    """One neighbour (rr, cc) of the source points (r, c) [B, 1, HW] -> (its weight where
    it lies inside the image, else 0; weight * fill where it lies outside, else 0; its
    flat index into x [B, C, H, W], clamped to the image: plane [B, C, 1] + rr W + cc)."""
    weight = (1 - xp.abs(r - rr)) * (1 - xp.abs(c - cc))
    inside = (rr >= 0) & (rr <= r_max) & (cc >= 0) & (cc <= c_max)
    pixel = xp.minimum(xp.maximum(rr, 0), r_max) * width + xp.minimum(xp.maximum(cc, 0), c_max)
    return (xp.where(inside, weight, 0.0), xp.where(inside, 0.0, weight * fill),
            plane + pixel.astype(xp.int64))


@kernel
def bilinear_add(xp, out, inside, value, outside):
    """out + inside value + outside: one neighbour's share of a bilinear sample."""
    return out + inside * value + outside


def affine(x, matrix, fill=0.5):
    """Resample every image of x [B, C, H, W] through its own 2x3 matrix [B, 2, 3]: output
    pixel (row, col) reads input (r, c) = matrix @ (row, col, 1), relative to the image
    centre, bilinearly; pixels read from outside the image are `fill`.

    Each of the four neighbours is one fused kernel for its weights and flat indices, one
    gather (take) and one fused accumulation."""
    xp = array_module(x)
    B, C, H, W = x.shape
    rows, cols = xp.meshgrid(xp.arange(H, dtype=x.dtype) - (H - 1) / 2,
                             xp.arange(W, dtype=x.dtype) - (W - 1) / 2, indexing="ij")
    grid = xp.stack([rows.ravel(), cols.ravel(), xp.ones(H * W, dtype=x.dtype)])   # [3, HW]
    src = xp.asarray(matrix, dtype=x.dtype) @ grid                                # [B, 2, HW]
    r = src[:, None, 0] + (H - 1) / 2                                             # [B, 1, HW]
    c = src[:, None, 1] + (W - 1) / 2
    r0, c0 = xp.floor(r), xp.floor(c)
    plane = xp.asarray((np.arange(B * C) * (H * W)).reshape(B, C, 1))             # [B, C, 1]
    out = xp.zeros((B, C, H * W), dtype=x.dtype)
    flat = x.ravel()
    for dr in (0, 1):                     # the four neighbours, weighted bilinearly
        for dc in (0, 1):
            inside, outside, index = bilinear_tap(r, c, r0 + dr, c0 + dc, H - 1, W - 1,
                                                  W, plane, fill)
            out = bilinear_add(out, inside, xp.take(flat, index), outside)  # [B, C, HW]
    return out.reshape(B, C, H, W)


def _affine_matrices(kinds, m, sign, size):
    """The 2x3 matrices [n, 2, 3] of the geometric operations `kinds` (one per image)."""
    A = np.zeros((len(kinds), 2, 3))
    A[:, 0, 0] = A[:, 1, 1] = 1.0
    strength = m / 10 * sign
    t = np.deg2rad(30.0 * strength)                               # rotate: up to 30 degrees
    rot = kinds == "rotate"
    A[rot, 0, 0], A[rot, 0, 1], A[rot, 1, 0], A[rot, 1, 1] = (np.cos(t[rot]), -np.sin(t[rot]),
                                                              np.sin(t[rot]), np.cos(t[rot]))
    for kind, row, col, scale in (("shear_x", 1, 0, 0.3), ("shear_y", 0, 1, 0.3),       # up to 0.3
                                  ("translate_x", 1, 2, 0.45 * size), ("translate_y", 0, 2, 0.45 * size)):
        picked = kinds == kind                                    # translate: up to 45% of the image
        A[picked, row, col] = scale * strength[picked]
    return A


def _geometric(x, kinds, m, sign):
    """rotate, shear_x, shear_y, translate_x, translate_y: one affine resampling."""
    return affine(x, array_module(x).asarray(_affine_matrices(kinds, m, sign, x.shape[2])))


def _enhance_other(kind, x):
    """The image each enhancement blends away from (PIL's ImageEnhance)."""
    xp = array_module(x)
    if kind == "brightness":
        return xp.zeros_like(x)
    if kind == "color":
        return xp.broadcast_to(_gray(x), x.shape)
    if kind == "contrast":
        return xp.broadcast_to(_gray(x).mean(axis=(1, 2, 3), keepdims=True), x.shape)
    pad = xp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")      # sharpness: PIL's
    H, W = x.shape[2:]                                                   # 3x3 smoothing filter
    other = sum(pad[:, :, i:i + H, j:j + W] for i in range(3) for j in range(3))
    return (other + 4 * x) / 13.0


def _enhance(x, kinds, m, sign):
    """brightness, color, contrast, sharpness: one blend, factor 0.1 .. 1.9."""
    xp = array_module(x)
    factor = xp.asarray(1.0 + 0.9 * m / 10 * sign, dtype=x.dtype)
    other = None
    for kind in ENHANCEMENTS:                                            # each image its own
        picked = kinds == kind
        if picked.any():
            this = _enhance_other(kind, x)
            other = this if other is None else xp.where(xp.asarray(picked)[:, None, None, None], this, other)
    return _blend(x, other, factor)


ENHANCEMENTS = ("brightness", "color", "contrast", "sharpness")


def _posterize(x, kinds, m, sign):
    """Keep 8 - bits of each 8-bit value, bits from 0 to 4."""
    xp = array_module(x)
    step = xp.asarray(2.0 ** np.floor(4 * m / 10), dtype=x.dtype)[:, None, None, None]
    return xp.floor(xp.round(x * 255) / step) * step / 255


def _solarize(x, kinds, m, sign):
    """Invert every value at or above a threshold (1 down to 0)."""
    xp = array_module(x)
    threshold = xp.asarray(1.0 - m / 10, dtype=x.dtype)[:, None, None, None]
    return xp.where(x >= threshold, 1.0 - x, x)


def _autocontrast(x, kinds, m, sign):
    """Stretch each channel's range to [0, 1] (channels with one value left alone)."""
    xp = array_module(x)
    lo = x.min(axis=(2, 3), keepdims=True)
    hi = x.max(axis=(2, 3), keepdims=True)
    span = hi - lo
    return xp.where(span > 0, (x - lo) / xp.where(span > 0, span, 1.0), x)


# each operation's family: the function that applies it (with the others of its family,
# each image its own) to the images that drew any of them
FAMILY = {"identity": None, "autocontrast": _autocontrast, "posterize": _posterize,
          "solarize": _solarize, **{k: _enhance for k in ENHANCEMENTS},
          **{k: _geometric for k in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")}}


def _single(name):
    def op(x, m, sign):
        """RandAugment's `name` on every image of x [B, C, H, W] (magnitudes m [B], signs [B])."""
        return x if FAMILY[name] is None else FAMILY[name](x, np.full(len(x), name), m, sign)
    op.__name__ = name
    return op


RAND_AUGMENT_OPS = {name: _single(name) for name in FAMILY}


def rand_augment(x, rng, num_ops=2, magnitude=9.0, ops=None):
    """RandAugment on a batch of images in [0, 1], x [B, C, H, W] on any backend: each
    image gets num_ops operations from `ops` (default: every RAND_AUGMENT_OPS entry),
    drawn independently per image from the host generator rng, at strength
    magnitude (0..10); symmetric operations (rotate, shear, translate, the enhancements)
    take a random direction. Each round gathers the images of each family (geometric,
    enhancement, posterize, solarize, autocontrast), transforms them together, each with
    its own operation, and puts them back."""
    if not 0 <= magnitude <= 10:
        raise ValueError(f"RandAugment magnitude must be in [0, 10], got {magnitude}")
    names = list(RAND_AUGMENT_OPS) if ops is None else list(ops)
    unknown = [n for n in names if n not in RAND_AUGMENT_OPS]
    if unknown:
        raise ValueError(f"unknown RandAugment operations {unknown}: choose from "
                         f"{', '.join(RAND_AUGMENT_OPS)}")
    xp = array_module(x)
    B = len(x)
    x = x.copy()
    families = list(dict.fromkeys(FAMILY[n] for n in names if FAMILY[n] is not None))
    for _ in range(num_ops):
        choice = rng.integers(0, len(names), B)
        sign = np.where(rng.random(B) < 0.5, -1.0, 1.0)
        chosen = np.array(names)[choice]
        for family in families:
            picked = np.nonzero([FAMILY[n] is family for n in chosen])[0]
            if len(picked):
                idx = xp.asarray(picked)
                m = np.full(len(picked), float(magnitude))
                x[idx] = family(x[idx], chosen[picked], m, sign[picked]).astype(x.dtype, copy=False)
    return x


def mix_batch(x, labels, num_classes, rng, mixup_alpha=0.0, cutmix_alpha=0.0):
    """Mixup or CutMix on a whole batch -> (images, soft targets [B, num_classes]).

    Each image is paired with the image at a random permutation of the batch and
    lam ~ Beta(alpha, alpha). Mixup blends them: x = lam x + (1 - lam) x[perm]. CutMix
    pastes a box of the partner, covering about 1 - lam of the image (one box for the
    batch), and lam becomes the share left uncovered. The targets mix the same way:
    lam onehot(y) + (1 - lam) onehot(y[perm]). With both alphas set, CutMix is chosen
    for a batch with probability 1/2."""
    xp = array_module(x)
    B, C, H, W = x.shape
    onehot = xp.eye(num_classes, dtype=x.dtype)[labels]                     # [B, K]
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < 0.5)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    if alpha <= 0:
        return x, onehot
    lam = float(rng.beta(alpha, alpha))
    perm = xp.asarray(rng.permutation(B))
    if use_cutmix:
        cut = np.sqrt(1.0 - lam)
        h, w = int(H * cut), int(W * cut)
        cy, cx = int(rng.integers(H)), int(rng.integers(W))
        y0, y1 = max(cy - h // 2, 0), min(cy + h - h // 2, H)
        x0, x1 = max(cx - w // 2, 0), min(cx + w - w // 2, W)
        x = x.copy()
        x[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (H * W)
    else:
        x = lam * x + (1.0 - lam) * x[perm]
    return x, lam * onehot + (1.0 - lam) * onehot[perm]


def regularize(cfg, images, labels, epoch, i):
    """The batch-level regularizers of TrainConfig cfg on batch i of epoch: random erasing,
    then mixup or cutmix -> (images, targets); targets are the labels, or soft targets
    [B, num_classes] when mixing. Draws: the named streams of (seed, epoch, i) (seeds.py)."""
    if cfg.random_erase:
        images = random_erase(images, seeds.generator(cfg.seed, epoch, i, "erase"), cfg.random_erase)
    if cfg.mixup or cfg.cutmix:
        return mix_batch(images, labels, cfg.num_classes, seeds.generator(cfg.seed, epoch, i, "mix"),
                         cfg.mixup, cfg.cutmix)
    return images, labels
