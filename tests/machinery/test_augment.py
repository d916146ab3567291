"""augment.py: random crop and flip (and airbench's alternating flip), mixup, cutmix and
random erasing, on any backend, each against the same draws written out. (RandAugment:
test_randaugment.py.)"""

import numpy as np
import pytest

import minivit
from minivit import augment, data

H = minivit.to_host


def test_random_crop_is_a_shifted_window_and_flip_mirrors(backend):
    rng_x = np.random.default_rng(0)
    x = rng_x.standard_normal((16, 3, 8, 8))
    xp = minivit.get_xp(backend)
    out = minivit.to_host(augment.random_crop_flip(xp.asarray(x), np.random.default_rng(5)))
    rng = np.random.default_rng(5)   # the same draws, in the same order
    dy, dx = rng.integers(0, 9, 16), rng.integers(0, 9, 16)           # padding 4
    flips = rng.random(16) < 0.5
    padded = np.pad(x, ((0, 0), (0, 0), (4, 4), (4, 4)))
    for i in range(16):
        ref = padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
        np.testing.assert_array_equal(out[i], ref[..., ::-1] if flips[i] else ref)
    assert 0 < flips.sum() < 16 and (dy != 4).any()


def test_alternating_flip_shows_every_image_both_ways_in_two_epochs(backend):
    """airbench's alternating flip: epoch 1 mirrors a random half, epoch 2 the other half,
    epoch 3 the first half again; the crops stay random."""
    n, side = 64, 8
    x = np.broadcast_to(10 + np.arange(side, dtype=np.uint8), (n, 3, side, side)).copy()  # a ramp
    xp = minivit.get_xp(backend)

    def mirrored(loader, epoch):          # image index -> mirrored in this epoch?
        out = {}
        for images, labels in loader.batches(epoch):
            row = minivit.to_host(images)[:, 0].sum(axis=1)                     # [B, W]
            for r, label in zip(row, minivit.to_host(labels)):
                ramp = r[r > 0]                                                  # the crop's zeros out
                out[int(label)] = bool(ramp[0] > ramp[-1])
        return np.array([out[i] for i in range(n)])

    alternate = data.Loader(x, np.arange(n), 16, xp, [0] * 3, [1 / 255] * 3, shuffle=True,
                            augment=True, seed=4, alternate_flip=True)
    first, second, third = (mirrored(alternate, e) for e in (1, 2, 3))
    assert 0.3 < first.mean() < 0.7
    np.testing.assert_array_equal(second, ~first)
    np.testing.assert_array_equal(third, first)
    np.testing.assert_array_equal(first, augment.alternating_mirror(4, 1, n))
    random = data.Loader(x, np.arange(n), 16, xp, [0] * 3, [1 / 255] * 3, shuffle=True,
                         augment=True, seed=4)
    assert not np.array_equal(mirrored(random, 2), ~mirrored(random, 1))   # random flips don't


def test_mixup_blends_images_and_targets(backend):
    x = np.random.default_rng(0).random((6, 3, 8, 8)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 4, 5])
    xp = minivit.get_xp(backend)
    out, targets = augment.mix_batch(xp.asarray(x), xp.asarray(y), 10, np.random.default_rng(4),
                                     mixup_alpha=0.8)
    out, targets = H(out), H(targets)
    rng = np.random.default_rng(4)                  # the same draws, in the same order
    lam, perm = rng.beta(0.8, 0.8), rng.permutation(6)
    np.testing.assert_allclose(out, lam * x + (1 - lam) * x[perm], rtol=1e-6)
    np.testing.assert_allclose(targets, lam * np.eye(10)[y] + (1 - lam) * np.eye(10)[y[perm]], rtol=1e-6)
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)


def test_cutmix_pastes_one_box_and_weights_targets_by_area(backend):
    x = np.arange(4, dtype=np.float32)[:, None, None, None] * np.ones((4, 3, 16, 16), np.float32)
    y = np.array([0, 1, 2, 3])
    xp = minivit.get_xp(backend)
    out, targets = augment.mix_batch(xp.asarray(x), xp.asarray(y), 4, np.random.default_rng(2),
                                     cutmix_alpha=1.0)
    out, targets = H(out), H(targets)
    pasted = out != x                                # where an image shows its partner
    assert pasted.any()
    area = pasted[:, 0].sum(axis=(1, 2))
    moved = area > 0
    box = pasted[moved][0, 0]
    rows, cols = np.flatnonzero(box.any(1)), np.flatnonzero(box.any(0))
    assert box[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()   # one solid rectangle
    lam = 1 - box.sum() / 256
    for i in np.flatnonzero(moved):
        assert targets[i, y[i]] == pytest.approx(lam, abs=1e-6)
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)


def test_random_erase_boxes(backend):
    x = minivit.get_xp(backend).ones((64, 3, 32, 32), np.float32)
    out = H(augment.random_erase(x, np.random.default_rng(0), prob=1.0))
    zero = (out == 0)[:, 0]
    frac = zero.mean(axis=(1, 2))
    assert (frac > 0).all() and frac.max() <= 1 / 3 + 0.05 and frac.min() >= 0.015
    assert ((out == 0).all(axis=1) == zero).all()                   # every channel alike
    np.testing.assert_array_equal(H(augment.random_erase(x, np.random.default_rng(0), prob=0.0)), H(x))
