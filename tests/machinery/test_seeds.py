"""seeds.py: one named random stream per use, from (seed, epoch, batch): separate,
repeatable, and every generator of a training run a stream of its own."""

import numpy as np
import pytest


def test_random_streams_are_separate_and_repeatable():
    from minivit import seeds
    draws = {s: seeds.generator(3, 2, 5, s).random(8) for s in seeds.STREAMS}
    for a in seeds.STREAMS:
        for b in seeds.STREAMS:
            if a != b:
                assert not np.allclose(draws[a], draws[b]), (a, b)
        np.testing.assert_array_equal(draws[a], seeds.generator(3, 2, 5, a).random(8))
    assert not np.allclose(draws["mix"], seeds.generator(3, 2, 6, "mix").random(8))   # next batch
    assert not np.allclose(draws["mix"], seeds.generator(3, 3, 5, "mix").random(8))   # next epoch
    with pytest.raises(ValueError, match="unknown random stream 'dropout'"):
        seeds.generator(0, 1, 0, "dropout")


def test_training_draws_no_two_regularizers_from_one_seed(monkeypatch, tmp_path):
    """Every generator the training loop and the loader make is a named stream of its own."""
    from minivit import seeds, train as train_module
    from minivit.config import TrainConfig
    made = []
    real = seeds.generator
    monkeypatch.setattr(seeds, "generator", lambda *key: made.append(key) or real(*key))
    cfg = TrainConfig.from_preset("sample", epochs=1, embed_dim=16, depth=2, num_heads=2,
                                  batch_size=32, limit_train=100, drop_path=0.2, random_erase=0.5,
                                  mixup=0.8, randaugment=1, alternate_flip=True)
    train_module.train(cfg, out=tmp_path / "run", progress=False, plots=False, log=lambda *a: None)
    streams = {key[3] for key in made}
    assert streams == set(seeds.STREAMS)
    assert len(made) == len(set(made))                  # no key used twice
