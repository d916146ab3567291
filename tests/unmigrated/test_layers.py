"""Every layer: finite-difference gradient checks, forward references, float32 vs float64."""

import math

import numpy as np
import pytest

import minivit
from minivit.engine import gradcheck, layers, resize
from minivit.engine.backend import get_xp, to_device, to_host


@pytest.mark.parametrize("name", list(gradcheck.LAYERS))
def test_gradcheck_float64(name, backend):
    report = gradcheck.check_layer(name, "float64", backend)
    assert report.passed, str(report)
    assert report.max_rel_err <= 1e-7
    assert all(r.checked == int(np.prod(r.shape)) for r in report.results)  # every element


@pytest.mark.parametrize("name", list(gradcheck.LAYERS))
def test_gradcheck_float32_within_its_looser_tolerance(name):
    report = gradcheck.check_layer(name, "float32")
    assert report.passed, str(report)


@pytest.mark.parametrize("name", list(gradcheck.LAYERS))
def test_float32_forward_agrees_with_float64(name, backend):
    xp = get_xp(backend)
    forward, _, host = gradcheck.LAYERS[name](np.random.default_rng(3))
    out64 = to_host(forward(**{k: to_device(v, xp, "float64") for k, v in host.items()})[0])
    out32 = to_host(forward(**{k: to_device(v, xp, "float32") for k, v in host.items()})[0])
    assert out32.dtype == np.float32  # no silent promotion to float64
    np.testing.assert_allclose(out32, out64, rtol=1e-4, atol=1e-5)


def test_gradcheck_catches_a_wrong_backward():
    """The check is not vacuous: a backward with a transposed weight gradient fails."""
    def bad_backward(dy, cache):
        dx, dw, db = layers.linear_backward(dy, cache)
        return dx, dw * 1.001, db
    rng = np.random.default_rng(0)
    inputs = {"x": rng.standard_normal((3, 4)), "w": rng.standard_normal((4, 4)),
              "b": rng.standard_normal(4)}
    report = gradcheck.check(layers.linear_forward, bad_backward, inputs)
    assert not report.passed
    assert not report["w"].passed and report["x"].passed and report["b"].passed
    assert "SOME GRADIENTS ARE WRONG" in str(report)


def test_gradcheck_catches_a_missing_mean_term_in_layernorm():
    def bad_backward(dy, cache):
        xhat, rstd, w = cache.xhat, cache.rstd, cache.w
        return rstd * dy * w, (dy * xhat).reshape(-1, w.shape[0]).sum(0), dy.reshape(-1, w.shape[0]).sum(0)
    _, _, inputs = gradcheck.LAYERS["layernorm"](np.random.default_rng(0))
    assert not gradcheck.check(layers.layernorm_forward, bad_backward, inputs)["x"].passed


def test_gradcheck_report_table_and_sampling():
    report = gradcheck.check_layer("attention", max_checks=10)
    assert report["in_proj_weight"].checked == 10
    text = str(report)
    assert text.splitlines()[0].startswith("attention  (float64")
    assert "in_proj_weight" in text and "pass" in text and "all passed" in text
    with pytest.raises(ValueError, match="unknown layer 'convolution': choose one of linear"):
        gradcheck.check_layer("convolution")


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


def test_attention_matches_a_head_by_head_reference():
    rng = np.random.default_rng(1)
    B, N, D, H = 2, 5, 12, 3
    d = D // H
    x = rng.standard_normal((B, N, D))
    w_in, b_in = rng.standard_normal((3 * D, D)) * 0.3, rng.standard_normal(3 * D)
    w_out, b_out = rng.standard_normal((D, D)) * 0.3, rng.standard_normal(D)
    y, cache = layers.attention_forward(x, w_in, b_in, w_out, b_out, H)
    q, k, v = np.split(x @ w_in.T + b_in, 3, axis=-1)
    heads = []
    for h in range(H):
        sl = slice(h * d, (h + 1) * d)
        s = q[..., sl] @ k[..., sl].transpose(0, 2, 1) / math.sqrt(d)
        a = np.exp(s) / np.exp(s).sum(-1, keepdims=True)
        heads.append(a @ v[..., sl])
    ref = np.concatenate(heads, axis=-1) @ w_out.T + b_out
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cache.sdpa.a.sum(-1), 1.0)   # attention rows sum to one


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
    with pytest.raises(ValueError, match="unknown gelu 'relu': use one of exact, tanh"):
        minivit.ViT(gelu="relu")


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
