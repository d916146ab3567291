"""augment.py's RandAugment on a whole batch: each operation does what its name says, on
any backend, each image draws its own, and the Loader applies it before crop and flip."""

import numpy as np
import pytest

from minivit import augment, data
from minivit.engine.backend import get_xp, to_host


@pytest.fixture
def images():
    return np.random.default_rng(0).random((6, 3, 8, 8)).astype(np.float32)


def _op(name, x, magnitude, sign=1.0):
    return augment.RAND_AUGMENT_OPS[name](x, np.full(len(x), float(magnitude)),
                                       np.full(len(x), sign))


def test_affine_identity_and_integer_shift(images, backend):
    xp = get_xp(backend)
    x = xp.asarray(images)
    eye = np.tile(np.array([[1.0, 0, 0], [0, 1, 0]]), (6, 1, 1))
    np.testing.assert_allclose(to_host(augment.affine(x, eye)), images, atol=1e-6)
    shift = eye.copy()
    shift[:, 1, 2] = 2.0                     # output column c reads input column c + 2
    out = to_host(augment.affine(x, shift, fill=0.5))
    np.testing.assert_allclose(out[..., :-2], images[..., 2:], atol=1e-6)
    np.testing.assert_allclose(out[..., -2:], 0.5)


def test_affine_quarter_turn_is_rot90(images):
    turn = np.tile(np.array([[0.0, 1, 0], [-1, 0, 0]]), (6, 1, 1))   # (r, c) <- (c, -r)
    out = augment.affine(images, turn)
    np.testing.assert_allclose(out, np.rot90(images, k=1, axes=(2, 3)), atol=1e-5)


def test_half_pixel_shift_interpolates(images):
    shift = np.tile(np.array([[1.0, 0, 0], [0, 1, 0.5]]), (6, 1, 1))
    out = augment.affine(images, shift)
    np.testing.assert_allclose(out[..., :-1], 0.5 * (images[..., :-1] + images[..., 1:]), atol=1e-6)


@pytest.mark.parametrize("name", sorted(augment.RAND_AUGMENT_OPS))
def test_every_operation_keeps_shape_dtype_and_range(images, name, backend):
    xp = get_xp(backend)
    out = _op(name, xp.asarray(images), 9, -1.0)
    assert out.shape == images.shape and out.dtype == np.float32
    out = to_host(out)
    assert out.min() >= 0.0 and out.max() <= 1.0 + 1e-6


@pytest.mark.parametrize("name", ["brightness", "color", "contrast", "sharpness", "rotate",
                                  "shear_x", "shear_y", "translate_x", "translate_y"])
def test_magnitude_zero_changes_nothing(images, name):
    np.testing.assert_allclose(_op(name, images, 0), images, atol=1e-6)


def test_pixel_operations(images):
    np.testing.assert_allclose(_op("brightness", images, 10, -1.0), 0.1 * images, atol=1e-6)
    gray = augment._gray(images)
    np.testing.assert_allclose(_op("color", images, 10, -1.0),
                               gray + 0.1 * (images - gray), atol=1e-6)
    solar = _op("solarize", images, 5)                   # invert values at or above 0.5
    np.testing.assert_allclose(solar, np.where(images >= 0.5, 1 - images, images))
    poster = _op("posterize", images, 10) * 255          # 4 bits dropped: multiples of 16
    np.testing.assert_allclose(poster % 16, 0, atol=1e-3)
    auto = _op("autocontrast", images, 0)
    np.testing.assert_allclose(auto.min(axis=(2, 3)), 0, atol=1e-6)
    np.testing.assert_allclose(auto.max(axis=(2, 3)), 1, atol=1e-6)
    flat = np.full_like(images, 0.3)                     # one value per channel: unchanged
    np.testing.assert_allclose(_op("autocontrast", flat, 0), flat)


def test_rand_augment_is_repeatable_and_leaves_its_input_alone(images):
    a = augment.rand_augment(images, np.random.default_rng(1), num_ops=2, magnitude=9)
    b = augment.rand_augment(images, np.random.default_rng(1), num_ops=2, magnitude=9)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, images)
    changed = [not np.allclose(a[i], images[i]) for i in range(len(images))]
    assert 0 < sum(changed)                              # some images changed
    assert images.dtype == a.dtype and images is not a   # the input is not modified


def test_rand_augment_gives_each_image_its_own_operations(backend):
    """The batch result equals each image augmented alone by the operations it drew (the
    same draws): grouping images by family never mixes their operations."""
    xp = get_xp(backend)
    images = np.random.default_rng(2).random((24, 3, 8, 8)).astype(np.float32)
    out = to_host(augment.rand_augment(xp.asarray(images), np.random.default_rng(7), num_ops=3, magnitude=7))
    rng, names = np.random.default_rng(7), list(augment.RAND_AUGMENT_OPS)
    ref = images.copy()
    for _ in range(3):
        choice = rng.integers(0, len(names), len(images))
        sign = np.where(rng.random(len(images)) < 0.5, -1.0, 1.0)
        for i in range(len(images)):
            op = augment.RAND_AUGMENT_OPS[names[choice[i]]]
            ref[i:i + 1] = op(ref[i:i + 1], np.array([7.0]), sign[i:i + 1])
    assert len({names[k] for k in choice}) > 6             # many operations in one batch
    np.testing.assert_allclose(out, ref, atol=2e-6)


def test_rand_augment_draws_the_operations_per_image(backend):
    """32 copies of one image, one operation each from identity and solarize at full
    strength (which inverts every value): each image draws its own, so both show up, each
    image is exactly one of the two, and which one follows the generator's draws."""
    xp = get_xp(backend)
    one = np.random.default_rng(0).random((1, 3, 8, 8)).astype(np.float32)
    batch = np.repeat(one, 32, axis=0)
    out = to_host(augment.rand_augment(xp.asarray(batch), np.random.default_rng(7), num_ops=1,
                                       magnitude=10, ops=["identity", "solarize"]))
    kept = np.array([np.array_equal(o, one[0]) for o in out])
    inverted = np.array([np.allclose(o, 1.0 - one[0]) for o in out])
    assert (kept ^ inverted).all() and 0 < kept.sum() < 32
    np.testing.assert_array_equal(inverted, np.random.default_rng(7).integers(0, 2, 32) == 1)


def test_rand_augment_rejects_bad_settings(images):
    with pytest.raises(ValueError, match="magnitude must be in"):
        augment.rand_augment(images, np.random.default_rng(0), magnitude=12)
    with pytest.raises(ValueError, match="unknown RandAugment operations"):
        augment.rand_augment(images, np.random.default_rng(0), ops=["blur"])


def test_loader_applies_rand_augment_before_crop_and_flip(backend):
    x = np.random.default_rng(0).integers(0, 256, (10, 3, 32, 32), dtype=np.uint8)
    y = np.arange(10)
    mean, std = [0.5] * 3, [0.25] * 3
    xp = get_xp(backend)
    plain = data.Loader(x, y, 5, xp, mean, std, shuffle=True, seed=3, augment=True)
    ra = data.Loader(x, y, 5, xp, mean, std, shuffle=True, seed=3, augment=True, randaugment=(2, 9.0))
    (p, py), (r, ry) = [tuple(map(to_host, next(loader.batches(1)))) for loader in (plain, ra)]
    np.testing.assert_array_equal(py, ry)                # same images, same order
    assert p.dtype == r.dtype == np.float32 and not np.allclose(p, r)
    again = to_host(next(data.Loader(x, y, 5, xp, mean, std, shuffle=True, seed=3, augment=True,
                                     randaugment=(2, 9.0)).batches(1))[0])
    np.testing.assert_array_equal(r, again)              # rebuilt exactly (resume)
