"""engine/layers.py: each layer's forward against a reference written out (or PyTorch's,
when installed), float32 against float64, and the backwards that skip the input gradient.
The gradients themselves: test_gradcheck.py."""

import math

import numpy as np
import pytest

from minivit.engine import gradcheck, layers
from minivit.engine.backend import get_xp, to_device, to_host


@pytest.mark.parametrize("name", list(gradcheck.LAYERS))
def test_float32_forward_agrees_with_float64(name, backend):
    xp = get_xp(backend)
    forward, _, host = gradcheck.LAYERS[name](np.random.default_rng(3))
    out64 = to_host(forward(**{k: to_device(v, xp, "float64") for k, v in host.items()})[0])
    out32 = to_host(forward(**{k: to_device(v, xp, "float32") for k, v in host.items()})[0])
    assert out32.dtype == np.float32  # no silent promotion to float64
    np.testing.assert_allclose(out32, out64, rtol=1e-4, atol=1e-5)


def test_patch_embed_equals_a_strided_convolution():
    rng = np.random.default_rng(0)
    B, C, H, W, D, p = 2, 3, 8, 12, 5, 4
    x, w, b = rng.standard_normal((B, C, H, W)), rng.standard_normal((D, C, p, p)), rng.standard_normal(D)
    y, _ = layers.patch_embed_forward(x, w, b)
    assert y.shape == (B, (H // p) * (W // p), D)
    for i in range(H // p):          # the conv, written out patch by patch
        for j in range(W // p):
            patch = x[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p]
            ref = np.einsum("bchw,dchw->bd", patch, w) + b
            np.testing.assert_allclose(y[:, i * (W // p) + j], ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(layers.unpatchify(layers.patchify(x, p), x.shape, p), x)


def test_layernorm_normalizes_each_token():
    rng = np.random.default_rng(2)
    x = 5 * rng.standard_normal((3, 4, 16)) + 2
    y, _ = layers.layernorm_forward(x, np.ones(16), np.zeros(16))
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(-1), x.var(-1) / (x.var(-1) + 1e-5), rtol=1e-10)


def test_gelu_exact_and_tanh_values():
    xs = np.array([-3.0, -1.0, -0.1, 0.0, 0.5, 2.0])
    exact = [x * 0.5 * (1 + math.erf(x / math.sqrt(2))) for x in xs]
    np.testing.assert_allclose(layers.gelu_forward(xs)[0], exact, rtol=1e-14, atol=1e-15)
    tanh = [0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))) for x in xs]
    np.testing.assert_allclose(layers.gelu_tanh_forward(xs)[0], tanh, rtol=1e-14, atol=1e-15)
    assert np.abs(np.array(exact) - np.array(tanh)).max() < 1e-3


def test_softmax_is_stable_for_huge_scores():
    a, _ = layers.softmax_forward(np.array([[1e4, 1e4 - 1.0, -1e4]], dtype=np.float32))
    assert np.isfinite(a).all()
    np.testing.assert_allclose(a.sum(-1), 1.0, rtol=1e-6)


def test_token_embed_places_class_token_first():
    x = np.ones((2, 3, 4))
    cls = np.full((1, 1, 4), 7.0)
    pos = np.arange(16.0).reshape(1, 4, 4)
    y, _ = layers.token_embed_forward(x, cls, pos)
    np.testing.assert_array_equal(y[:, 0], np.broadcast_to(7.0 + pos[0, 0], (2, 4)))
    np.testing.assert_array_equal(y[:, 1:], np.broadcast_to(1.0 + pos[0, 1:], (2, 3, 4)))


@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 1), (2, 0), (1, 2)])
def test_conv2d_matches_torch_conv2d(stride, padding):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((2, 3, 9, 8)), rng.standard_normal((5, 3, 3, 3)), rng.standard_normal(5)
    y, cache = layers.conv2d_forward(x, w, b, stride=stride, padding=padding)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=stride, padding=padding)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    G = rng.standard_normal(y.shape)
    ty.backward(torch.from_numpy(G))
    for mine, ref in zip(layers.conv2d_backward(G, cache), (tx, tw, tb)):
        np.testing.assert_allclose(mine, ref.grad.numpy(), rtol=1e-11, atol=1e-12)


def test_conv2d_with_kernel_equal_to_stride_is_the_patch_embedding():
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((6, 3, 4, 4)), rng.standard_normal(6)
    y, c_conv = layers.conv2d_forward(x, w, b, stride=4, padding=0)            # [2, 6, 2, 2]
    tokens, c_patch = layers.patch_embed_forward(x, w, b)                       # [2, 4, 6]
    np.testing.assert_allclose(y.reshape(2, 6, 4).transpose(0, 2, 1), tokens, rtol=1e-12)
    dtokens = rng.standard_normal(tokens.shape)                                 # and backward
    dy = dtokens.transpose(0, 2, 1).reshape(y.shape)
    for conv, patch in zip(layers.conv2d_backward(dy, c_conv), layers.patch_embed_backward(dtokens, c_patch)):
        np.testing.assert_allclose(conv, patch, rtol=1e-12, atol=1e-14)


def test_backwards_without_the_input_gradient_return_none_and_the_same_parameter_gradients():
    """need_dx=False (an input no one trains: the images) skips dx and changes nothing else."""
    rng = np.random.default_rng(6)
    x, w, b = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((5, 3, 3, 3)), rng.standard_normal(5)
    y, c_conv = layers.conv2d_forward(x, w, b, stride=2, padding=1)             # [2, 5, 4, 4]
    dy = rng.standard_normal(y.shape)
    h, c_lin = layers.linear_forward(x.reshape(2, 3, 64), rng.standard_normal((7, 64)), b[:1].repeat(7))
    dh = rng.standard_normal(h.shape)
    for backward, grad, cache in ((layers.conv2d_backward, dy, c_conv), (layers.linear_backward, dh, c_lin)):
        full, skipped = backward(grad, cache), backward(grad, cache, need_dx=False)
        assert full[0] is not None and skipped[0] is None
        for got, want in zip(skipped[1:], full[1:]):
            np.testing.assert_array_equal(got, want)
