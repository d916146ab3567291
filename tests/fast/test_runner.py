"""fast/runner.py: the fast path computes the engine's numbers (block by block and whole
models, every pooling, stems, smaller images, stochastic depth, any thread count), its
gradients check, and it matches PyTorch's saved numbers; the way llm.c checks its kernels
against its reference."""

import numpy as np
import pytest

import minivit
from minivit.engine import gradcheck, layers, transformer
from minivit.engine.draws import StepDraws
from minivit.fast import FastRunner, runner, threads

from helpers import STEMS, model_from_reference, stem_model, tiny_config, torch_reference

H = minivit.to_host


def _fast_and_engine_block(drop_path, cls_only):
    """gradcheck's block case through the fast block's forward (checked equal to the
    engine's) and the engine's backward -> (dy, rows the fast block computes, its cache,
    the engine's dx and parameter gradients)."""
    _, _, inputs = gradcheck.LAYERS["block"](np.random.default_rng(0))
    p = {k: v for k, v in inputs.items() if k != "x"}
    x = inputs["x"]
    keep = ((np.array([2.0, 0.0, 2.0])[:, None, None], np.array([2.0, 2.0, 0.0])[:, None, None])
            if drop_path else None)
    y_ref, c_ref = transformer.block_forward(x, p, 2, keep=keep)
    y, c = runner.block_fused(x, p, 2, keep=keep, cls_only=cls_only)
    rows = 1 if cls_only else x.shape[1]
    np.testing.assert_allclose(y, y_ref[:, :rows], rtol=1e-12, atol=1e-14)
    dy = np.zeros_like(y_ref)
    dy[:, :rows] = np.random.default_rng(1).standard_normal(y.shape)
    dx_ref, g_ref = transformer.block_backward(dy, c_ref)
    return dy, rows, c, dx_ref, g_ref


@pytest.mark.parametrize("cls_only", [False, True])
@pytest.mark.parametrize("drop_path", [False, True])
def test_fast_block_equals_the_engine_block(drop_path, cls_only):
    dy, rows, c, dx_ref, g_ref = _fast_and_engine_block(drop_path, cls_only)
    g = {k: np.full_like(v, np.nan) for k, v in g_ref.items()}   # every entry must be written
    dx = runner.block_backward_into(dy[:, :rows], c, g, np)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-12)
    for k in g_ref:
        np.testing.assert_allclose(g[k], g_ref[k], rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("cls_only", [False, True])
@pytest.mark.parametrize("drop_path", [False, True])
def test_the_gpus_schedule_of_a_block_equals_the_engine_block(drop_path, cls_only, monkeypatch):
    """runner.py's GPU schedule (attention_gpu, block_backward_gpu, the LayerNorm backward's
    slots) is array code for any xp: run here on NumPy against the engine's block, the
    gradients written into one buffer laid out like a block's (block_param_shapes' order)
    with the column sums' views FastRunner._spans makes: norm2's takes attn.out_proj.bias
    (without stochastic depth), norm1's a bias laid just before it (the previous block's
    mlp.2.bias), which must get the row sum of the block's dx."""
    monkeypatch.setattr(runner, "attention_nobias", runner.attention_gpu)
    dy, rows, c, dx_ref, g_ref = _fast_and_engine_block(drop_path, cls_only)
    D = dy.shape[-1]
    shapes = {"before": (D,), **transformer.block_param_shapes(D, 16)}
    sizes = [int(np.prod(shape)) for shape in shapes.values()]
    offset = dict(zip(shapes, np.cumsum([0] + sizes)))
    flat = np.full(sum(sizes), np.nan)                       # every entry must be written
    g = {name: flat[offset[name]:offset[name] + n].reshape(shape)
         for (name, shape), n in zip(shapes.items(), sizes)}
    sums = {"norm1": flat[offset["before"]:offset["norm1.bias"] + D].reshape(3, D),
            "norm2": flat[offset["attn.out_proj.bias"]:offset["norm2.bias"] + D].reshape(3, D)}
    dx = runner.block_backward_gpu(dy[:, :rows], c, g, np, sums)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-12)
    for k in g_ref:
        np.testing.assert_allclose(g[k], g_ref[k], rtol=1e-10, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(g["before"], dx_ref.sum(axis=(0, 1)), rtol=1e-10, atol=1e-12)
    g2 = {k: np.full_like(v, np.nan) for k, v in g_ref.items()}      # no side-by-side views
    np.testing.assert_allclose(runner.block_backward_gpu(dy[:, :rows], c, g2, np), dx_ref, rtol=1e-10,
                               atol=1e-12)
    for k in g_ref:
        np.testing.assert_allclose(g2[k], g_ref[k], rtol=1e-10, atol=1e-12, err_msg=k)


def _step(net, model, x, labels, draws_seed=None):
    """One forward and backward of net (the model itself or a FastRunner of it), with the
    draws of draws_seed -> host (logits, dx, {name: gradient})."""
    draws = None if draws_seed is None else StepDraws.sample(
        model.config, len(x), np.random.default_rng(draws_seed), model.xp, model.dtype)
    logits = net.forward(x, draws=draws)
    model.zero_grad()
    dx = net.backward(minivit.cross_entropy(logits, model.xp.asarray(labels))[1])
    return H(logits), H(dx), {k: H(v).copy() for k, v in model.grads().items()}


def _assert_same(a, b, rtol=1e-11):
    for u, v in zip(a, b):
        if isinstance(u, dict):
            assert sorted(u) == sorted(v)
            for k in u:
                np.testing.assert_allclose(v[k], u[k], rtol=rtol, atol=1e-13, err_msg=k)
        else:
            np.testing.assert_allclose(v, u, rtol=rtol, atol=1e-13)


@pytest.mark.parametrize("drop_path", [0.4, 0.0])
@pytest.mark.parametrize("pool, stem, stem_layers", [("cls", 0, 1), ("mean", 4, 2), ("seq", 4, 1)])
def test_fast_model_equals_the_engine_with_every_parameter_random(backend, pool, stem, stem_layers,
                                                                  drop_path):
    """A freshly built model has zero biases and unit LayerNorm weights, which hide a bias
    added in the wrong place (say, outside a residual kernel's stochastic-depth mask): here
    every parameter is random, stochastic depth is on (or off: on the GPU, every bias
    gradient then summed with a LayerNorm's), and smaller images take the resized position
    embedding (one conv in the stem, or two)."""
    model = minivit.ViT(**tiny_config(depth=3, drop_path=drop_path, pool=pool, stem_channels=stem,
                                      stem_layers=stem_layers),
                        dtype="float64", backend=backend)
    rng = np.random.default_rng(3)
    model.flat_params[...] = model.xp.asarray(rng.normal(0.0, 0.5, model.flat_params.shape))
    assert min(float(abs(model.params[k]).min()) for k in ("head.bias", "blocks.2.mlp.2.bias")) > 0
    for side in (8, 4) if stem_layers == 1 else (8,):       # two convs: 8x8 images and up
        x = rng.standard_normal((5, 3, side, side))
        labels = np.arange(5) % 3
        ref = _step(model, model, x, labels, draws_seed=2)
        _assert_same(ref, _step(FastRunner(model, threads=2), model, x, labels, draws_seed=2))


@pytest.mark.parametrize("n_threads", [1, 2, 3, 7])
def test_fast_model_equals_the_engine_on_any_number_of_threads(n_threads):
    """The batch cut into shards, each shard with its rows of the step's draws."""
    x = np.random.default_rng(0).standard_normal((7, 3, 8, 8))
    labels = np.arange(7) % 3
    model = minivit.ViT(**tiny_config(depth=3, drop_path=0.5), dtype="float64")
    net = FastRunner(model, threads=n_threads)
    assert net.threads == n_threads and len(threads.shards(7, n_threads)) == n_threads
    _assert_same(_step(model, model, x, labels, draws_seed=5), _step(net, model, x, labels, draws_seed=5))


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


def test_fast_model_gradient_check_with_stochastic_depth():
    model = minivit.ViT(**tiny_config(depth=3), dtype="float64", drop_path=0.5)
    report = gradcheck.check_model(model, batch_size=4, max_checks=8, draws_seed=3,
                                   net=FastRunner(model, threads=3))
    assert report.passed, str(report)


@pytest.mark.parametrize(**STEMS)
def test_fast_path_gradchecks_models_with_a_conv_stem(backend, stem):
    model = stem_model(backend, stem)
    report = gradcheck.check_model(model, batch_size=3, max_checks=12, net=FastRunner(model))
    assert report.passed, str(report)


@pytest.mark.parametrize("stem", [0, 2])
def test_fast_path_gradchecks_smaller_images(backend, stem):
    model = minivit.ViT(img_size=8, patch_size=2, embed_dim=8, depth=2, num_heads=2, mlp_ratio=2.0,
                        num_classes=3, stem_channels=stem, dtype="float64", backend=backend, seed=2)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    report = gradcheck.check_model(model, x=x, max_checks=12, net=FastRunner(model, threads=2))
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
        grads.append(H(model.flat_grads).copy())
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


def test_the_fast_path_matches_pytorchs_numbers(backend):
    """tests/reference/torch_simplevit.npz (see tests/engine/test_torch_reference.py): the
    logits, the input gradient and every parameter gradient, through the fast path."""
    ref = torch_reference()
    model = model_from_reference(ref, backend)
    net = FastRunner(model, threads=1)
    logits = net.forward(ref["x"])
    np.testing.assert_allclose(H(logits), ref["logits"], rtol=1e-10, atol=1e-12)
    _, dlogits = minivit.cross_entropy(logits, model.xp.asarray(ref["labels"]), ref["meta"]["label_smoothing"])
    model.zero_grad()
    np.testing.assert_allclose(H(net.backward(dlogits)), ref["grad/input"], rtol=1e-10, atol=1e-12)
    for name, g in model.grads().items():
        np.testing.assert_allclose(H(g), ref[f"grad/{name}"], err_msg=name, rtol=1e-10, atol=1e-12)
