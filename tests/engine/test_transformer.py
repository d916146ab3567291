"""engine/transformer.py: attention against a head-by-head reference, the block's and
the head's gradients by parameter name, sequence pooling."""

import math

import numpy as np
import pytest

from minivit.engine import transformer


def test_attention_matches_a_head_by_head_reference():
    rng = np.random.default_rng(1)
    B, N, D, H = 2, 5, 12, 3
    d = D // H
    x = rng.standard_normal((B, N, D))
    w_in, b_in = rng.standard_normal((3 * D, D)) * 0.3, rng.standard_normal(3 * D)
    w_out, b_out = rng.standard_normal((D, D)) * 0.3, rng.standard_normal(D)
    y, cache = transformer.attention_forward(x, w_in, b_in, w_out, b_out, H)
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


def _random(shapes, rng):
    return {name: rng.standard_normal(shape) for name, shape in shapes.items()}


def test_the_block_returns_a_gradient_for_every_parameter_by_name():
    rng = np.random.default_rng(2)
    shapes = transformer.block_param_shapes(8, 16)
    assert list(shapes) == ["norm1.weight", "norm1.bias", "attn.in_proj_weight", "attn.in_proj_bias",
                            "attn.out_proj.weight", "attn.out_proj.bias", "norm2.weight", "norm2.bias",
                            "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]
    x = rng.standard_normal((3, 5, 8))
    y, cache = transformer.block_forward(x, _random(shapes, rng), num_heads=2)
    dx, grads = transformer.block_backward(rng.standard_normal(y.shape), cache)
    assert y.shape == dx.shape == x.shape
    assert {k: g.shape for k, g in grads.items()} == shapes


@pytest.mark.parametrize("pool", ["cls", "mean", "seq"])
def test_the_head_returns_a_gradient_for_every_parameter_by_name(pool):
    rng = np.random.default_rng(3)
    shapes = transformer.head_param_shapes(6, 4, pool)
    assert (transformer.SEQ_POOL_WEIGHT in shapes) == (pool == "seq")
    h = rng.standard_normal((3, 5, 6))
    logits, cache = transformer.head_forward(h, _random(shapes, rng), pool)
    dh, grads = transformer.head_backward(rng.standard_normal(logits.shape), cache)
    assert logits.shape == (3, 4) and dh.shape == h.shape
    assert {k: g.shape for k, g in grads.items()} == shapes
    if pool == "cls":                       # the head reads the class token alone
        assert not dh[:, 1:].any() and dh[:, 0].any()
    else:                                   # ... or the patch tokens alone
        assert not dh[:, 0].any() and dh[:, 1:].any()


def test_sequence_pooling_follows_the_score():
    """A score that singles out one token makes the pooled row that token; the weights over
    the patch tokens sum to 1. Without its weight, pool "seq" says what it needs."""
    h = np.zeros((1, 4, 3))
    h[0, 1:, 0] = [0.0, 50.0, 0.0]
    h[0, 1:, 1] = [1.0, 2.0, 3.0]
    pooled, cache = transformer.seq_pool_forward(h, np.array([[1.0, 0.0, 0.0]]))
    np.testing.assert_allclose(pooled, h[:, 2], atol=1e-12)
    np.testing.assert_allclose(cache.softmax.a.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="pool 'seq' needs its weight"):
        transformer.pool_forward(h, "seq")
