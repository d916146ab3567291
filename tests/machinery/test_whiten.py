"""The whitening initialization of the stem's first conv (whiten.py)."""

import numpy as np
import pytest

import minivit
from minivit import distributed
from minivit.engine import layers
from minivit.config import TrainConfig
from minivit.data import channel_stats, data_or_sample, load_cifar10, normalize
from minivit.run import prepare_data, start_run
from minivit.whiten import whitening_filters


def sample_images(n=400):
    folder, _ = data_or_sample(None, log=lambda *a: None)
    return load_cifar10(folder)["x_train"][:n]


def test_the_filters_decorrelate_the_patches_to_unit_variance():
    x = sample_images()
    mean, std = channel_stats(x)
    w = whitening_filters(x, 24, mean, std)
    assert w.shape == (24, 3, 3, 3)
    np.testing.assert_array_equal(w[12:], -w[:12])                 # each filter and its negative
    images = normalize(x, mean, std, dtype="float64")
    y, _ = layers.conv2d_forward(images, w[:12], np.zeros(12), stride=1, padding=0)   # [N, 12, 30, 30]
    feats = y.transpose(0, 2, 3, 1).reshape(-1, 12)
    cov = feats.T @ feats / len(feats)
    np.testing.assert_allclose(np.diag(cov), 1.0, atol=0.02)       # var lam / (lam + eps)
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 1e-8        # uncorrelated
    # the directions of largest variance come first: unwhitened, filter 0 carries the most
    raw = np.linalg.norm(w[:12].reshape(12, -1), axis=1)
    assert raw[0] == raw.min()


def test_bad_channel_counts_are_refused():
    """(A run's configuration asking for them: test_train_config.py.)"""
    x = sample_images(10)
    mean, std = channel_stats(x)
    with pytest.raises(ValueError, match="even number of channels, at most 54, got 7"):
        whitening_filters(x, 7, mean, std)


def test_a_run_with_stem_init_whiten_starts_from_the_filters(tmp_path, backend):
    cfg = TrainConfig.from_preset("sample", stem_channels=8, stem_init="whiten", limit_train=300,
                                  embed_dim=16, depth=1, num_heads=2)
    run = start_run(cfg, None, tmp_path / "run", distributed.world(), backend=backend, log=lambda *a: None)
    x_train = prepare_data(cfg, None)["x_train"]                # the run's training split
    w = minivit.to_host(run.model.params["stem.conv.weight"])
    np.testing.assert_allclose(w, whitening_filters(x_train, 8, *channel_stats(x_train)), rtol=1e-5)
    assert not np.any(minivit.to_host(run.model.params["stem.conv.bias"]))
    plain = minivit.ViT(cfg.model_config(), seed=cfg.seed)
    assert not np.allclose(w, minivit.to_host(plain.params["stem.conv.weight"]))
