"""engine/draws.py: a training step's random draws (stochastic depth's masks), what the
engine's ViT and the fast path both read."""

import numpy as np
import pytest

import minivit
from minivit.engine.draws import StepDraws

from helpers import tiny_config

H = minivit.to_host


def test_stochastic_depth_masks_keep_the_expectation(backend):
    model = minivit.ViT(**tiny_config(depth=3), drop_path=0.3, backend=backend)
    draws = StepDraws.sample(model.config, 20000, np.random.default_rng(0), model.xp, model.dtype)
    assert len(draws.drop_path) == 3 and draws.drop_path[0] is None     # first block: rate 0
    k1, k2 = (H(k) for k in draws.drop_path[2])                         # last block: rate 0.3
    assert k1.shape == k2.shape == (20000, 1, 1) and k1.dtype == np.float32
    values = np.unique(k1)
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.7, rel=1e-6)
    assert abs(float(k1.mean()) - 1.0) < 0.03                           # expectation kept
    assert abs(float((H(draws.drop_path[1][0]) == 0).mean()) - 0.15) < 0.02   # block 1: rate 0.15
    assert not np.array_equal(k1, k2)                   # attention and MLP drawn apart


def test_no_draws_without_a_generator_or_without_stochastic_depth():
    cfg = minivit.ViTConfig(**tiny_config(depth=3), drop_path=0.3)
    assert StepDraws.sample(cfg, 8, None) == StepDraws.none(3) == StepDraws(drop_path=[None] * 3)
    plain = minivit.ViTConfig(**tiny_config(depth=3))
    assert StepDraws.sample(plain, 8, np.random.default_rng(0)) == StepDraws.none(3)


def test_the_draws_of_some_rows_are_those_rows_of_the_batch():
    cfg = minivit.ViTConfig(**tiny_config(depth=2), drop_path=0.5)
    draws = StepDraws.sample(cfg, 7, np.random.default_rng(1), np, np.float64)
    part = draws.rows(slice(2, 5))
    assert part.drop_path[0] is None
    for got, whole in zip(part.drop_path[1], draws.drop_path[1]):
        np.testing.assert_array_equal(got, whole[2:5])


def test_a_forward_without_draws_is_deterministic_and_with_them_is_not(backend):
    model = minivit.ViT(**tiny_config(depth=3), drop_path=0.3, backend=backend)
    x = np.random.default_rng(1).standard_normal((4, 3, 8, 8))
    np.testing.assert_array_equal(H(model.forward(x)), H(model.forward(x)))    # evaluation
    draws = StepDraws.sample(model.config, 4, np.random.default_rng(5), model.xp, model.dtype)
    assert not np.array_equal(H(model.forward(x)), H(model.forward(x, draws=draws)))
    np.testing.assert_array_equal(H(model.forward(x, draws=draws)), H(model.forward(x, draws=draws)))
