"""schedule.py: the learning rate of a step (by steps, or by the clock with a time budget)
and progressive resizing's image size."""

import dataclasses
import math

import pytest

from minivit.config import TrainConfig
from minivit.schedule import image_size_at, lr_at, warmup_cosine


def test_warmup_cosine_schedule():
    lr = [warmup_cosine(s, total_steps=110, base_lr=1.0, warmup_steps=10, min_lr=0.1)
          for s in range(120)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert lr[10] == pytest.approx(1.0)
    assert lr[60] == pytest.approx(0.55)                     # halfway down the cosine
    assert lr[110] == pytest.approx(0.1) and lr[119] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))    # never rises after warmup


def test_the_learning_rate_follows_the_clock():
    cfg = TrainConfig.from_preset("default", time_budget=100.0, warmup_fraction=0.1, lr=1.0, min_lr=0.0)
    assert lr_at(cfg, 0, 10, elapsed=5.0) == pytest.approx(0.5)          # half way up the warmup
    assert lr_at(cfg, 0, 10, elapsed=10.0) == pytest.approx(1.0)
    assert lr_at(cfg, 0, 10, elapsed=55.0) == pytest.approx(0.5)         # cosine half way down
    assert lr_at(cfg, 0, 10, elapsed=100.0) == pytest.approx(0.0, abs=1e-12)
    linear = TrainConfig.from_preset("default", time_budget=100.0, warmup_fraction=0.0,
                                     schedule="linear", lr=1.0, min_lr=0.0)
    assert lr_at(linear, 0, 10, elapsed=25.0) == pytest.approx(0.75)


def test_the_learning_rate_follows_the_steps_without_a_time_budget():
    """By epochs: warmup_epochs of linear warmup to the peak, then each schedule's decay
    reaching min_lr at the last step (10 steps an epoch here)."""
    cosine = TrainConfig.from_preset("default", epochs=6, warmup_epochs=2.0, lr=1.0, min_lr=0.0)
    lr = [lr_at(cosine, s, 10) for s in range(60)]
    assert lr[:20] == pytest.approx([(s + 1) / 20 for s in range(20)])   # two epochs up
    assert lr[20] == pytest.approx(1.0) and max(lr) == pytest.approx(1.0)
    assert lr[40] == pytest.approx(0.5)                                  # half way down
    assert lr[59] == pytest.approx(0.5 * (1 + math.cos(math.pi * 39 / 40)))
    assert all(a >= b for a, b in zip(lr[20:], lr[21:]))
    linear = TrainConfig.from_preset("default", epochs=3, warmup_epochs=1.0, schedule="linear",
                                     lr=1.0, min_lr=0.1)
    lr = [lr_at(linear, s, 10) for s in range(30)]
    assert lr[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lr[10] == pytest.approx(1.0) and lr[20] == pytest.approx(0.55) and lr[29] == pytest.approx(0.145)
    constant = TrainConfig.from_preset("default", epochs=3, warmup_epochs=0.5, schedule="constant", lr=1.0)
    assert [lr_at(constant, s, 10) for s in (0, 4, 5, 29)] == pytest.approx([0.2, 1.0, 1.0, 1.0])
    assert lr_at(dataclasses.replace(constant, warmup_epochs=0.0), 0, 10) == 1.0


def test_progressive_resizing_image_sizes_follow_the_clock_or_the_steps():
    clock = TrainConfig.from_preset("hybrid", time_budget=100.0, low_res=0.4, low_res_size=16, mid_res=0.0)
    assert [image_size_at(clock, 0, 10, elapsed=t) for t in (0.0, 39.9, 40.0, 99.0)] == [16, 16, 32, 32]
    steps = TrainConfig.from_preset("hybrid", epochs=5, low_res=0.4, low_res_size=16, mid_res=0.0)
    assert [image_size_at(steps, s, 10) for s in (0, 19, 20, 49)] == [16, 16, 32, 32]
    assert image_size_at(TrainConfig.from_preset("default"), 0, 10) == 32          # off
    three = TrainConfig.from_preset("hybrid", time_budget=100.0)          # 40% 16px, 30% 24px
    assert [image_size_at(three, 0, 10, elapsed=t) for t in (0.0, 39.9, 40.0, 69.9, 70.0, 99.0, 101.0)] \
        == [16, 16, 24, 24, 32, 32, 32]
