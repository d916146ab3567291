"""engine/resize.py: area resizing (progressive resizing's smaller images) and the position
embedding that fits their smaller patch grid."""

import inspect

import numpy as np
import pytest

import minivit
from minivit.engine import resize


@pytest.mark.parametrize("size", [16, 8, 24, 5])
def test_area_resize_matches_torch_adaptive_average_pooling(size):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 32, 32))
    y, cache = resize.area_resize_forward(x, size)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.adaptive_avg_pool2d(tx, size)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    G = rng.standard_normal(y.shape)
    ty.backward(torch.from_numpy(G))
    np.testing.assert_allclose(resize.area_resize_backward(G, cache), tx.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_area_resize_by_two_averages_2x2_blocks_and_keeps_the_class_token():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    y, _ = resize.area_resize_forward(x, 2)
    np.testing.assert_array_equal(y[0, 0], [[2.5, 4.5], [10.5, 12.5]])
    pos = np.random.default_rng(6).standard_normal((1, 1 + 16, 3))      # a 4 x 4 grid
    small, _ = resize.pos_embed_resize_forward(pos, 2)                  # a 2 x 2 grid
    assert small.shape == (1, 5, 3)
    np.testing.assert_array_equal(small[0, 0], pos[0, 0])
    np.testing.assert_allclose(small[0, 1], pos[0, [1, 2, 5, 6]].mean(axis=0), rtol=1e-12)


def test_the_area_weights_are_made_once_and_read_only():
    """area_weights is cached per sizes, backend and dtype, and the cached matrix cannot be
    written (every call shares it); area_resize_forward takes no weights of its own."""
    w = resize.area_weights(32, 16, np, np.float32)
    assert w is resize.area_weights(32, 16, np, np.float32)
    assert w is not resize.area_weights(32, 16, np, np.float64)
    assert w.dtype == np.float32 and w.shape == (16, 32)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="read-only"):
        w[0, 0] = 2.0
    assert list(inspect.signature(resize.area_resize_forward).parameters) == ["x", "size"]
    y, _ = resize.area_resize_forward(np.ones((1, 1, 32, 32), np.float32), 16)
    assert y.dtype == np.float32 and np.allclose(y, 1.0)


def test_smaller_images_are_the_full_ones_area_resized_and_only_sizes_that_fit_pass():
    """A 4x4 image whose 2x2 blocks are constant is the 8x8 image area-resized; a model
    built for 8x8 takes smaller square images whose side is a multiple of its patch (here
    2), and says what fits otherwise. (Their gradients: test_gradcheck.py.)"""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 4))
    big = np.repeat(np.repeat(x, 2, axis=2), 2, axis=3)
    small, _ = resize.area_resize_forward(big, 4)
    np.testing.assert_allclose(small, x, rtol=1e-12)
    model = minivit.ViT(img_size=8, patch_size=2, embed_dim=8, depth=1, num_heads=2, num_classes=3)
    assert model.forward(x).shape == (2, 3)
    with pytest.raises(ValueError, match=r"images are 5x5, the model expects 8x8 \(or smaller "
                                         r"square images whose side is a multiple of 2\)"):
        model.forward(np.zeros((1, 3, 5, 5)))
    with pytest.raises(ValueError, match="images are 16x16, the model expects 8x8"):
        model.forward(np.zeros((1, 3, 16, 16)))
