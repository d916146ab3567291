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
from .backend import array_module


CROP_PADDING = 4                   # random_crop_flip: zeros around each image before the cut
ERASE_AREA = (0.02, 1 / 3)         # random_erase: the box's share of the image, drawn in this range
ERASE_ASPECT = (0.3, 3.3)          # ... and its height / width, log-uniform in this range


def random_crop_flip(x, rng):
    """Augment a batch x [B, C, H, W] at once: pad every image by CROP_PADDING zeros, cut a
    random H x W window from each, and mirror about half of them left-right.
    Offsets and flips come from the host generator rng."""
    xp = array_module(x)
    B, C, H, W = x.shape
    pad = CROP_PADDING
    padded = xp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dy = xp.asarray(rng.integers(0, 2 * pad + 1, B))
    dx = xp.asarray(rng.integers(0, 2 * pad + 1, B))
    rows = (dy[:, None] + xp.arange(H))[:, None, :, None]            # [B, 1, H, 1]
    cols = (dx[:, None] + xp.arange(W))[:, None, None, :]            # [B, 1, 1, W]
    x = padded[xp.arange(B)[:, None, None, None], xp.arange(C)[None, :, None, None], rows, cols]
    mirror = xp.asarray(rng.random(B) < 0.5)[:, None, None, None]
    return xp.where(mirror, x[..., ::-1], x)


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


def affine(x, matrix, fill=0.5):
    """Resample every image of x [B, C, H, W] through its own 2x3 matrix [B, 2, 3]: output
    pixel (row, col) reads input (r, c) = matrix @ (row, col, 1), relative to the image
    centre, bilinearly; pixels read from outside the image are `fill`."""
    xp = array_module(x)
    B, C, H, W = x.shape
    rows, cols = xp.meshgrid(xp.arange(H, dtype=x.dtype) - (H - 1) / 2,
                             xp.arange(W, dtype=x.dtype) - (W - 1) / 2, indexing="ij")
    grid = xp.stack([rows.ravel(), cols.ravel(), xp.ones(H * W, dtype=x.dtype)])   # [3, HW]
    src = xp.asarray(matrix, dtype=x.dtype) @ grid                                # [B, 2, HW]
    r = src[:, 0] + (H - 1) / 2
    c = src[:, 1] + (W - 1) / 2
    r0, c0 = xp.floor(r), xp.floor(c)
    out = xp.zeros((B, C, H * W), dtype=x.dtype)
    flat = x.reshape(B, C, H * W)
    for dr in (0, 1):                     # the four neighbours, weighted bilinearly
        for dc in (0, 1):
            rr, cc = r0 + dr, c0 + dc
            weight = (1 - xp.abs(r - rr)) * (1 - xp.abs(c - cc))                 # [B, HW]
            inside = ((rr >= 0) & (rr <= H - 1) & (cc >= 0) & (cc <= W - 1)).astype(x.dtype)
            index = (xp.clip(rr, 0, H - 1) * W + xp.clip(cc, 0, W - 1)).astype(xp.int64)
            value = xp.take_along_axis(flat, index[:, None, :].repeat(C, axis=1), axis=2)
            out += (weight * inside)[:, None] * value                       # [B, C, HW]
            out += (weight * (1 - inside) * fill)[:, None]                  # outside: fill
    return out.reshape(B, C, H, W)


def _affine_op(kind):
    def op(x, m, sign):
        xp = array_module(x)
        B, _, H, _ = x.shape
        A = np.zeros((len(m), 2, 3))
        A[:, 0, 0] = A[:, 1, 1] = 1.0
        if kind == "rotate":                          # up to 30 degrees
            t = np.deg2rad(30.0 * m / 10 * sign)
            A[:, 0, 0], A[:, 0, 1], A[:, 1, 0], A[:, 1, 1] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
        elif kind == "shear_x":                       # up to 0.3
            A[:, 1, 0] = 0.3 * m / 10 * sign
        elif kind == "shear_y":
            A[:, 0, 1] = 0.3 * m / 10 * sign
        elif kind == "translate_x":                   # up to 45% of the image
            A[:, 1, 2] = 0.45 * H * m / 10 * sign
        else:                                         # translate_y
            A[:, 0, 2] = 0.45 * H * m / 10 * sign
        return affine(x, xp.asarray(A))
    return op


def _enhance_op(kind):
    def op(x, m, sign):
        xp = array_module(x)
        factor = xp.asarray(1.0 + 0.9 * m / 10 * sign, dtype=x.dtype)   # 0.1 .. 1.9
        if kind == "brightness":
            other = xp.zeros_like(x)
        elif kind == "color":
            other = xp.broadcast_to(_gray(x), x.shape)
        elif kind == "contrast":
            other = xp.broadcast_to(_gray(x).mean(axis=(1, 2, 3), keepdims=True), x.shape)
        else:                                         # sharpness: PIL's 3x3 smoothing filter
            pad = xp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
            H, W = x.shape[2:]
            other = sum(pad[:, :, i:i + H, j:j + W] for i in range(3) for j in range(3))
            other = (other + 4 * x) / 13.0
        return _blend(x, other, factor)
    return op


def _posterize(x, m, sign):
    """Keep 8 - bits of each 8-bit value, bits from 0 to 4."""
    xp = array_module(x)
    step = xp.asarray(2.0 ** np.floor(4 * m / 10), dtype=x.dtype)[:, None, None, None]
    return xp.floor(xp.round(x * 255) / step) * step / 255


def _solarize(x, m, sign):
    """Invert every value at or above a threshold (1 down to 0)."""
    xp = array_module(x)
    threshold = xp.asarray(1.0 - m / 10, dtype=x.dtype)[:, None, None, None]
    return xp.where(x >= threshold, 1.0 - x, x)


def _autocontrast(x, m, sign):
    """Stretch each channel's range to [0, 1] (channels with one value left alone)."""
    xp = array_module(x)
    lo = x.min(axis=(2, 3), keepdims=True)
    hi = x.max(axis=(2, 3), keepdims=True)
    span = hi - lo
    return xp.where(span > 0, (x - lo) / xp.where(span > 0, span, 1.0), x)


def _identity(x, m, sign):
    return x


RAND_AUGMENT_OPS = {
    "identity": _identity, "autocontrast": _autocontrast, "posterize": _posterize,
    "solarize": _solarize, "brightness": _enhance_op("brightness"),
    "color": _enhance_op("color"), "contrast": _enhance_op("contrast"),
    "sharpness": _enhance_op("sharpness"), "rotate": _affine_op("rotate"),
    "shear_x": _affine_op("shear_x"), "shear_y": _affine_op("shear_y"),
    "translate_x": _affine_op("translate_x"), "translate_y": _affine_op("translate_y"),
}


def rand_augment(x, rng, num_ops=2, magnitude=9.0, ops=None):
    """RandAugment on a batch of images in [0, 1], x [B, C, H, W] on any backend: each
    image gets num_ops operations from `ops` (default: every RAND_AUGMENT_OPS entry),
    drawn independently per image from the host generator rng, at strength
    magnitude (0..10); symmetric operations (rotate, shear, translate, the enhancements)
    take a random direction."""
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
    for _ in range(num_ops):
        choice = rng.integers(0, len(names), B)
        sign = np.where(rng.random(B) < 0.5, -1.0, 1.0)
        for k, name in enumerate(names):
            picked = np.nonzero(choice == k)[0]
            if len(picked) and name != "identity":
                idx = xp.asarray(picked)
                m = np.full(len(picked), float(magnitude))
                x[idx] = RAND_AUGMENT_OPS[name](x[idx], m, sign[picked]).astype(x.dtype, copy=False)
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
