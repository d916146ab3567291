"""The fast paths (fast.py, threads.py) agree with the reference (layers.py, model.py),
and their gradients check: the way llm.c checks its kernels against its reference."""

import numpy as np
import pytest
from scipy.special import erf

import minivit
from minivit import fast
from minivit.engine import gradcheck, layers
from minivit.fast import kernels, threads
from minivit.errors import MinivitError
from minivit.fast import FastRunner

from conftest import tiny_config


@pytest.fixture
def big():
    rng = np.random.default_rng(0)
    x = (2 * rng.standard_normal((4 * kernels.BLOCK // 96 + 7, 96))).astype(np.float32)
    assert kernels.applies(x)          # large enough, and not a multiple of the block size
    return x, rng.standard_normal(x.shape).astype(np.float32)


def test_normal_cdf_is_accurate_to_float32():
    xs = np.linspace(-12, 12, 400_001).astype(np.float32)
    gauss = np.exp(-0.5 * xs * xs)
    cdf = kernels.normal_cdf(xs, gauss).astype(np.float64)
    exact = 0.5 * (1 + erf(xs.astype(np.float64) / np.sqrt(2)))
    assert np.abs(cdf - exact).max() < 3e-7
    assert cdf.min() >= 0 and cdf.max() <= 1


def test_blocked_gelu_is_accurate_at_the_extremes():
    x = np.array([0.0, -0.0, 1e-30, -1e-30, 3.0, -3.0, 8.0, -8.0, 40.0, -40.0, 1e4, -1e4]
                 * kernels.BLOCK, np.float32)[:4 * kernels.BLOCK]         # four blocks
    y, dgelu = kernels.blocked_gelu(x)
    xd = x.astype(np.float64)
    cdf = 0.5 * (1 + erf(xd / np.sqrt(2)))
    assert np.isfinite(y).all() and np.isfinite(dgelu).all()
    np.testing.assert_allclose(y, xd * cdf, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dgelu, cdf + xd * np.exp(-xd * xd / 2) / np.sqrt(2 * np.pi),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["exact", "tanh"])
def test_gelu_kernels_agree_with_the_reference(big, kind):
    x, dy = big
    b = np.linspace(-1, 1, x.shape[-1]).astype(np.float32)
    y, dgelu = fast.GELU_BIAS_KERNELS[kind](x, b)                      # blocked for exact float32 NumPy
    forward, backward = layers.GELUS[kind]
    y_ref, cache = forward(x + b)
    assert y.dtype == dgelu.dtype == np.float32
    np.testing.assert_allclose(y, y_ref, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(dy * dgelu, backward(dy, cache), rtol=2e-6, atol=2e-6)
    x64 = x[:50].astype(np.float64)                        # float64: the plain body, exact
    y, dgelu = fast.GELU_BIAS_KERNELS[kind](x64, b.astype(np.float64))
    y_ref, cache = forward(x64 + b)
    np.testing.assert_allclose(y, y_ref, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(dgelu, backward(np.ones_like(x64), cache), rtol=1e-12, atol=1e-13)


def test_small_and_float64_arrays_skip_the_blocked_gelu(monkeypatch):
    assert not kernels.applies(np.zeros(kernels.MIN_SIZE - 1, np.float32))
    assert kernels.applies(np.zeros(kernels.MIN_SIZE, np.float32))
    # one thread's shard of the hybrid's MLP activation at 16x16 (64 images, 17 tokens, 192)
    assert kernels.applies(np.zeros((64, 17, 192), np.float32))
    assert not kernels.applies(np.zeros(4 * kernels.BLOCK, np.float64))
    monkeypatch.setattr(kernels, "ENABLED", False)          # the switch (MINIVIT_NO_BLOCKED_GELU=1)
    assert not kernels.applies(np.zeros(4 * kernels.BLOCK, np.float32))


@pytest.mark.parametrize("cls_only", [False, True])
@pytest.mark.parametrize("drop_path", [False, True])
def test_fast_block_equals_the_reference_block(drop_path, cls_only):
    _, _, inputs = gradcheck.LAYERS["block"](np.random.default_rng(0))
    p = {k: v for k, v in inputs.items() if k != "x"}
    x = inputs["x"]
    keep = ((np.array([2.0, 0.0, 2.0])[:, None, None], np.array([2.0, 2.0, 0.0])[:, None, None])
            if drop_path else None)
    y_ref, c_ref = layers.block_forward(x, p, 2, keep=keep)
    y, c = fast.block_fused(x, p, 2, keep=keep, cls_only=cls_only)
    rows = 1 if cls_only else x.shape[1]
    np.testing.assert_allclose(y, y_ref[:, :rows], rtol=1e-12, atol=1e-14)
    dy = np.zeros_like(y_ref)
    dy[:, :rows] = np.random.default_rng(1).standard_normal(y.shape)
    dx_ref, g_ref = layers.block_backward(dy, c_ref)
    g = {k: np.full_like(v, np.nan) for k, v in g_ref.items()}   # every entry must be written
    dx = fast.block_backward_into(dy[:, :rows], c, g, np)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-12)
    for k in g_ref:
        np.testing.assert_allclose(g[k], g_ref[k], rtol=1e-10, atol=1e-12, err_msg=k)


def _step(net, model, x, labels, rng_seed=None):
    rng = None if rng_seed is None else np.random.default_rng(rng_seed)
    logits = net.forward(x, rng=rng)
    model.zero_grad()
    dx = net.backward(minivit.cross_entropy(logits, model.xp.asarray(labels))[1])
    return logits, dx, {k: v.copy() for k, v in model.grads().items()}


def _assert_same(a, b, rtol=1e-11):
    for u, v in zip(a, b):
        if isinstance(u, dict):
            for k in u:
                np.testing.assert_allclose(v[k], u[k], rtol=rtol, atol=1e-13, err_msg=k)
        else:
            np.testing.assert_allclose(v, u, rtol=rtol, atol=1e-13)


def _host(result):
    logits, dx, grads = result
    return minivit.to_host(logits), minivit.to_host(dx), {k: minivit.to_host(v) for k, v in grads.items()}


@pytest.mark.parametrize("pool", ["cls", "mean", "seq"])
def test_fast_model_equals_the_reference_model_on_each_backend(backend, pool):
    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8))
    labels = np.arange(5) % 3
    model = minivit.ViT(**tiny_config(depth=3, drop_path=0.4, pool=pool), dtype="float64",
                        backend=backend)
    ref = _host(_step(model, model, x, labels, rng_seed=2))
    _assert_same(ref, _host(_step(FastRunner(model), model, x, labels, rng_seed=2)))


@pytest.mark.parametrize("pool, stem", [("cls", 0), ("mean", 4), ("seq", 4)])
def test_fast_model_equals_the_reference_with_every_parameter_random(backend, pool, stem):
    """A freshly built model has zero biases and unit LayerNorm weights, which hide a bias
    added in the wrong place (say, outside a residual kernel's stochastic-depth mask): here
    every parameter is random, stochastic depth is on, and smaller images take the resized
    position embedding."""
    model = minivit.ViT(**tiny_config(depth=3, drop_path=0.4, pool=pool, stem_channels=stem),
                        dtype="float64", backend=backend)
    rng = np.random.default_rng(3)
    model.flat_params[...] = model.xp.asarray(rng.normal(0.0, 0.5, model.flat_params.shape))
    assert min(float(abs(model.params[k]).min()) for k in ("head.bias", "blocks.2.mlp.2.bias")) > 0
    for side in (8, 4):
        x = rng.standard_normal((5, 3, side, side))
        labels = np.arange(5) % 3
        ref = _host(_step(model, model, x, labels, rng_seed=2))
        _assert_same(ref, _host(_step(FastRunner(model, threads=2), model, x, labels, rng_seed=2)))


@pytest.mark.parametrize("n_threads", [1, 2, 3, 7])
def test_fast_model_equals_the_reference_model(n_threads):
    x = np.random.default_rng(0).standard_normal((7, 3, 8, 8))
    labels = np.arange(7) % 3
    model = minivit.ViT(**tiny_config(), dtype="float64")
    net = FastRunner(model, threads=n_threads)
    assert net.threads == n_threads and len(threads.shards(7, n_threads)) == n_threads
    _assert_same(_step(model, model, x, labels), _step(net, model, x, labels))


@pytest.mark.parametrize("pool", ["cls", "mean", "seq"])
def test_fast_model_with_stochastic_depth(pool):
    x = np.random.default_rng(1).standard_normal((6, 3, 8, 8))
    labels = np.arange(6) % 3
    model = minivit.ViT(**tiny_config(depth=3, drop_path=0.5, pool=pool), dtype="float64")
    ref = _step(model, model, x, labels, rng_seed=5)
    _assert_same(ref, _step(FastRunner(model, threads=4), model, x, labels, rng_seed=5))


def test_fast_model_in_float32_with_the_blocked_gelu():
    """float32, big enough for the blocked GELU: agreement to float32 rounding."""
    model = minivit.ViT(embed_dim=96, depth=1, num_heads=3, mlp_ratio=4.0)
    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32))   # [16, 65, 384] hidden: blocked
    labels = np.arange(16) % 10
    ref = _step(model, model, x, labels)
    got = _step(FastRunner(model, threads=2), model, x, labels)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-6)
    for k, g in ref[2].items():
        np.testing.assert_allclose(got[2][k], g, rtol=1e-4, atol=1e-4 * float(np.abs(g).max()), err_msg=k)


def test_fast_model_gradient_check():
    model = minivit.ViT(**tiny_config(depth=3), dtype="float64", drop_path=0.5)
    report = gradcheck.check_model(model, batch_size=4, max_checks=8, drop_path_seed=3,
                                   net=FastRunner(model, threads=3))
    assert report.passed, str(report)


@pytest.mark.parametrize("stem, stem_layers", [(0, 1), (4, 1), (4, 2)])
def test_backward_without_the_image_gradient_keeps_every_parameter_gradient(backend, stem, stem_layers,
                                                                             monkeypatch):
    """need_dx=False (training: the images need no gradient) returns None, skips the
    patch embedding's or the first stem conv's input gradient, and leaves every parameter's
    gradient as the full backward computes it."""
    asked = []                        # (need_dx, dx returned) of each conv backward, last conv first
    conv2d_backward = layers.conv2d_backward

    def recording(dy, c, need_dx=True):
        dx, dw, db = conv2d_backward(dy, c, need_dx)
        asked.append((need_dx, dx is not None))
        return dx, dw, db
    monkeypatch.setattr(layers, "conv2d_backward", recording)
    model = minivit.ViT(**tiny_config(stem_channels=stem, stem_layers=stem_layers, stem_stride=1),
                        dtype="float64", backend=backend)
    x = model.xp.asarray(np.random.default_rng(4).standard_normal((5, 3, 8, 8)))
    dlogits = model.xp.asarray(np.random.default_rng(5).standard_normal((5, 3)))
    net, grads = FastRunner(model, threads=1), []
    for need_dx in (True, False):
        net.forward(x)
        model.zero_grad()
        dx = net.backward(dlogits, need_dx=need_dx)
        assert (dx is None) == (not need_dx)
        grads.append(minivit.to_host(model.flat_grads).copy())
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-12, atol=1e-15)
    expected = [(True, True)] * stem_layers + [(True, True)] * (stem_layers - 1) + [(False, False)]
    assert asked == (expected if stem else [])
    assert np.count_nonzero(grads[0]) > grads[0].size // 2


def test_fast_gradients_accumulate_over_two_backwards():
    x = np.random.default_rng(2).standard_normal((5, 3, 8, 8))
    model = minivit.ViT(**tiny_config(), dtype="float64")
    net = FastRunner(model, threads=2)
    G = np.ones((5, 3))
    model.zero_grad()
    net.forward(x)
    net.backward(G)
    once = model.flat_grads.copy()
    net.forward(x)
    net.backward(G)                        # no zero_grad: the second adds onto the first
    np.testing.assert_allclose(model.flat_grads, 2 * once, rtol=1e-12)
    with pytest.raises(RuntimeError, match="without a forward"):
        net.backward(G)


def test_shards_are_nearly_equal_and_never_empty():
    assert [s.stop - s.start for s in threads.shards(7, 3)] == [2, 2, 3]
    assert [s.stop - s.start for s in threads.shards(2, 3)] == [1, 1]     # fewer images than threads
    assert threads.shards(1, 4) == [slice(0, 1)]


def test_thread_count_setting(monkeypatch):
    monkeypatch.setenv("MINIVIT_THREADS", "3")
    assert threads.cpu_threads() == 3
    assert FastRunner(minivit.ViT(**tiny_config())).threads == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("MINIVIT_THREADS", bad)
        with pytest.raises(MinivitError, match="MINIVIT_THREADS"):
            threads.cpu_threads()
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        FastRunner(minivit.ViT(**tiny_config()), threads=0)


def test_parallel_map_propagates_errors_and_restores_blas_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")      # a dependency; a GPU image may lack it
    threadpool_info = threadpoolctl.threadpool_info
    # the BLAS libraries minivit holds (NumPy's among them); one loaded later, e.g. by
    # importing torch in another test, is not NumPy's and is left alone
    held = {i["filepath"] for i in threads._blas_controller().info() if i["user_api"] == "blas"}
    assert held

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["filepath"] in held]

    before = blas_threads()
    seen = []

    def work(i):
        seen.append(blas_threads())
        if i == 2:
            raise RuntimeError("shard 2 failed")
        return i * i

    assert threads.parallel_map(work, range(2)) == [0, 1]
    assert all(t == [1] * len(before) for t in seen)      # one BLAS thread per shard
    with pytest.raises(RuntimeError, match="shard 2 failed"):
        threads.parallel_map(work, range(4))
    assert blas_threads() == before


def test_host_allocator_tuning_is_explicit_and_can_be_turned_off(monkeypatch):
    import subprocess
    import sys
    # importing minivit leaves the allocator alone: the mmap threshold stays dynamic
    code = "import minivit, minivit.train, minivit.cli; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "ok\n"
    src = open(minivit.fast.threads.__file__).read() + open(minivit.engine.backend.__file__).read()
    assert "HOST_ALLOCATOR_TUNED" not in src
    monkeypatch.setenv("MINIVIT_KEEP_MALLOC", "1")
    assert threads.tune_host_allocator() is False
    monkeypatch.delenv("MINIVIT_KEEP_MALLOC")
    import platform
    if platform.libc_ver()[0] == "glibc":
        assert threads.tune_host_allocator() is True


def test_reference_files_hold_no_speed_code():
    """layers.py and model.py are the student's path: no name in their code speaks of
    threads, shards, malloc or fast paths, and they import neither fast.py nor threads.py."""
    import ast
    for name in ("layers.py", "model.py"):
        tree = ast.parse(open(f"{minivit.__path__[0]}/{name}").read())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        names |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.arguments) for a in n.args + n.kwonlyargs}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        for word in ("thread", "shard", "malloc", "fast", "parallel", "cls_only", "num_queries"):
            assert not [n for n in names if word in n.lower()], (name, word)
