"""Splitting a NumPy batch over CPU threads changes nothing but the speed."""

import numpy as np
import pytest

import minivit
from minivit import backend, gradcheck

from conftest import tiny_config


def _run(model, x, labels, rng_seed=None):
    rng = None if rng_seed is None else np.random.default_rng(rng_seed)
    logits = model.forward(x, rng=rng)
    model.zero_grad()
    dx = model.backward(minivit.cross_entropy(logits, labels)[1])
    return logits, dx, {k: v.copy() for k, v in model.grads().items()}


@pytest.mark.parametrize("threads", [2, 3, 7])
def test_sharded_step_equals_the_whole_batch_step(threads):
    x = np.random.default_rng(0).standard_normal((7, 3, 8, 8))
    labels = np.arange(7) % 3
    whole = minivit.ViT(**tiny_config(), dtype="float64", threads=1)
    split = minivit.ViT(**tiny_config(), dtype="float64", threads=threads)
    assert len(split._shards(7)) == threads
    for a, b in zip(_run(whole, x, labels), _run(split, x, labels)):
        if isinstance(a, dict):
            for k in a:
                np.testing.assert_allclose(b[k], a[k], rtol=1e-12, atol=1e-14, err_msg=k)
        else:
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)


def test_sharded_step_with_stochastic_depth_and_mean_pool():
    x = np.random.default_rng(1).standard_normal((6, 3, 8, 8))
    labels = np.arange(6) % 3
    cfg = tiny_config(depth=3, drop_path=0.5, pool="mean")
    whole = _run(minivit.ViT(**cfg, dtype="float64", threads=1), x, labels, rng_seed=5)
    split = _run(minivit.ViT(**cfg, dtype="float64", threads=4), x, labels, rng_seed=5)
    np.testing.assert_allclose(split[0], whole[0], rtol=1e-12)
    for k in whole[2]:
        np.testing.assert_allclose(split[2][k], whole[2][k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_whole_model_gradient_check_with_threads():
    model = minivit.ViT(**tiny_config(), dtype="float64", threads=3)
    report = gradcheck.check_model(model, batch_size=4, max_checks=8)
    assert report.passed, str(report)


def test_gradients_accumulate_over_two_backwards_with_threads():
    x = np.random.default_rng(2).standard_normal((5, 3, 8, 8))
    model = minivit.ViT(**tiny_config(), dtype="float64", threads=2)
    logits = model.forward(x)
    G = np.ones_like(logits)
    model.zero_grad()
    model.backward(G)
    once = model.flat_grads.copy()
    model.forward(x)
    model.backward(G)                      # no zero_grad: the second adds onto the first
    np.testing.assert_allclose(model.flat_grads, 2 * once, rtol=1e-12)


def test_attention_maps_with_threads():
    x = np.random.default_rng(3).standard_normal((5, 3, 8, 8))
    _, whole = minivit.ViT(**tiny_config(), threads=1).attention(x)
    _, split = minivit.ViT(**tiny_config(), threads=2).attention(x)
    assert [m.shape for m in split] == [(5, 2, 5, 5)] * 2
    for a, b in zip(whole, split):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_shards_are_nearly_equal_and_never_empty():
    model = minivit.ViT(**tiny_config(), threads=3)
    assert [s.stop - s.start for s in model._shards(7)] == [2, 2, 3]
    assert [s.stop - s.start for s in model._shards(2)] == [1, 1]       # fewer images than threads
    assert model._shards(1) == [slice(0, 1)]


def test_thread_count_setting(monkeypatch):
    monkeypatch.setenv("MINIVIT_THREADS", "3")
    assert backend.cpu_threads() == 3
    assert minivit.ViT(**tiny_config()).threads == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("MINIVIT_THREADS", bad)
        with pytest.raises(ValueError, match="MINIVIT_THREADS"):
            backend.cpu_threads()
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        minivit.ViT(**tiny_config(), threads=0)


def test_parallel_map_propagates_errors_and_restores_blas_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")      # a dependency; the GPU image may lack it
    threadpool_info = threadpoolctl.threadpool_info

    # the BLAS libraries minivit holds (NumPy's among them); one loaded later, e.g. by
    # importing torch in another test, is not NumPy's and is left alone
    held = {i["filepath"] for i in backend._blas_controller().info() if i["user_api"] == "blas"}
    assert held                                            # NumPy's BLAS is among them

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["filepath"] in held]

    before = blas_threads()
    seen = []

    def work(i):
        seen.append(blas_threads())
        if i == 2:
            raise RuntimeError("shard 2 failed")
        return i * i

    assert backend.parallel_map(work, range(3)[:2]) == [0, 1]
    assert all(t == [1] * len(before) for t in seen)      # one BLAS thread per shard
    with pytest.raises(RuntimeError, match="shard 2 failed"):
        backend.parallel_map(work, range(4))
    assert blas_threads() == before
