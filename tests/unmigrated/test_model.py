"""The whole ViT: names and shapes, configuration errors, determinism, gradients."""

import numpy as np
import pytest

import minivit
from minivit.engine import gradcheck, resize
from minivit.engine.backend import to_host

from conftest import tiny_config


def test_default_model_matches_the_pytorch_simplevit_state_dict():
    model = minivit.ViT()
    sd = model.state_dict()
    assert model.num_parameters() == 2_693_578          # the PyTorch SimpleViT's count
    assert len(sd) == 4 + 6 * 12 + 4
    names = list(sd)
    assert names[:4] == ["patch_embed.proj.weight", "patch_embed.proj.bias",
                         "vit_embed.cls_token", "vit_embed.pos_embed"]
    assert names[4:16] == [f"blocks.0.{n}" for n in (
        "norm1.weight", "norm1.bias", "attn.in_proj_weight", "attn.in_proj_bias",
        "attn.out_proj.weight", "attn.out_proj.bias", "norm2.weight", "norm2.bias",
        "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias")]
    assert names[-4:] == ["norm.weight", "norm.bias", "head.weight", "head.bias"]
    shapes = {k: v.shape for k, v in sd.items()}
    assert shapes["patch_embed.proj.weight"] == (192, 3, 4, 4)
    assert shapes["vit_embed.cls_token"] == (1, 1, 192)
    assert shapes["vit_embed.pos_embed"] == (1, 65, 192)
    assert shapes["blocks.5.attn.in_proj_weight"] == (576, 192)
    assert shapes["blocks.5.mlp.0.weight"] == (768, 192)
    assert shapes["head.weight"] == (10, 192)
    assert {k: v.shape for k, v in model.grads().items()} == shapes
    assert all(v.dtype == np.float32 for v in sd.values())


def test_forward_shape_and_dtype(backend):
    model = minivit.ViT(**tiny_config(), backend=backend)
    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8))
    logits = model.forward(x)
    assert logits.shape == (5, 3) and logits.dtype == np.float32
    dx = model.backward(np.ones((5, 3)))
    assert dx.shape == (5, 3, 8, 8)


def test_initialization_is_as_documented():
    sd = minivit.ViT(seed=3).state_dict()
    w = sd["blocks.0.mlp.0.weight"]
    assert abs(float(w.std()) - 0.02 * 0.88) < 0.001   # std of N(0, .02) cut at 2 std
    assert float(np.abs(w).max()) <= 0.04 + 1e-7
    assert float(np.abs(sd["vit_embed.pos_embed"]).max()) > 0
    assert not sd["head.bias"].any() and not sd["blocks.0.attn.in_proj_bias"].any()
    np.testing.assert_array_equal(sd["blocks.2.norm2.weight"], 1.0)


@pytest.mark.parametrize("cfg, message", [
    (dict(img_size=32, patch_size=5), "img_size 32 is not divisible by patch_size 5"),
    (dict(embed_dim=100, num_heads=3), "embed_dim 100 is not divisible by num_heads 3"),
    (dict(dtype="float16"), "unknown dtype 'float16': use one of float32, float64"),
    (dict(depth=0), "depth must be a positive integer, got 0"),
    (dict(num_classes=2.5), "num_classes must be a positive integer, got 2.5"),
    (dict(mlp_ratio=0), "mlp_ratio must be a positive number, got 0"),
    (dict(gelu="relu"), "unknown gelu 'relu'"),
])
def test_invalid_configurations_raise_clear_errors(cfg, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        minivit.ViT(**cfg)


def test_fields_given_beside_a_config_override_it_everywhere():
    """ViT(config, field=...): the model is built as self.config says, dtype included."""
    model = minivit.ViT(minivit.ViTConfig(**tiny_config()), dtype="float64", depth=1)
    assert model.config.dtype == "float64" and model.config.depth == 1
    assert model.dtype == np.float64
    assert all(v.dtype == np.float64 for v in model.state_dict().values())
    assert model.forward(np.zeros((1, 3, 8, 8))).dtype == np.float64
    assert "blocks.1.norm1.weight" not in model.state_dict()


def test_same_seed_same_model_and_outputs():
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8))
    a, b = minivit.ViT(**tiny_config(), seed=7), minivit.ViT(**tiny_config(), seed=7)
    c = minivit.ViT(**tiny_config(), seed=8)
    for k in a.state_dict():
        np.testing.assert_array_equal(a.state_dict()[k], b.state_dict()[k])
    np.testing.assert_array_equal(a.forward(x), b.forward(x))
    assert not np.array_equal(a.forward(x), c.forward(x))


def test_float32_and_float64_models_agree(backend):
    x = np.random.default_rng(2).standard_normal((4, 3, 32, 32))
    m32 = minivit.ViT(embed_dim=48, depth=2, num_heads=3, backend=backend, seed=1)
    m64 = minivit.ViT(embed_dim=48, depth=2, num_heads=3, backend=backend, seed=1, dtype="float64")
    l32, l64 = to_host(m32.forward(x)), to_host(m64.forward(x))
    assert l32.dtype == np.float32 and l64.dtype == np.float64
    np.testing.assert_allclose(l32, l64, rtol=1e-4, atol=1e-5)
    labels = np.array([0, 1, 2, 3])
    m32.backward(minivit.cross_entropy(m32.forward(x), labels)[1])
    m64.backward(minivit.cross_entropy(m64.forward(x), labels)[1])
    for k, g64 in m64.grads().items():
        g32 = to_host(m32.grads()[k])
        assert g32.dtype == np.float32
        np.testing.assert_allclose(g32, to_host(g64), rtol=2e-3, atol=2e-3 * float(np.abs(g64).max()))


@pytest.mark.parametrize("gelu", ["exact", "tanh"])
def test_full_model_gradcheck_float64(backend, gelu):
    model = minivit.ViT(**tiny_config(), dtype="float64", backend=backend, seed=4, gelu=gelu)
    report = gradcheck.check_model(model, batch_size=2, seed=5)
    assert report.passed, str(report)
    assert len(report.results) == 1 + len(model.state_dict())
    assert report.max_rel_err <= 1e-7


def test_gradcheck_model_with_more_heads_and_tokens():
    model = minivit.ViT(img_size=8, patch_size=2, embed_dim=12, depth=1, num_heads=3,
                        mlp_ratio=1.0, num_classes=4, dtype="float64", seed=2)
    report = gradcheck.check_model(model, batch_size=2, seed=1, max_checks=40)
    assert report.passed, str(report)


def test_backward_accumulates_until_zero_grad():
    model = minivit.ViT(**tiny_config(), dtype="float64")
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    g = np.random.default_rng(1).standard_normal((2, 3))
    model.forward(x)
    model.backward(g)
    once = {k: v.copy() for k, v in model.grads().items()}
    model.forward(x)
    model.backward(g)
    for k, v in model.grads().items():
        np.testing.assert_allclose(v, 2 * once[k], rtol=1e-12, atol=1e-15)
    model.zero_grad()
    assert all(not v.any() for v in model.grads().values())


def test_backward_before_forward_is_a_clear_error():
    model = minivit.ViT(**tiny_config())
    with pytest.raises(RuntimeError, match=r"backward\(\) called without a forward\(\)"):
        model.backward(np.zeros((1, 3)))
    x = np.zeros((1, 3, 8, 8))
    logits = model.forward(x, keep_cache=False)          # evaluation: nothing kept
    np.testing.assert_array_equal(logits, model.forward(x))
    model.forward(x, keep_cache=False)
    with pytest.raises(RuntimeError, match="called without a forward"):
        model.backward(np.zeros((1, 3)))


def test_state_dict_follows_optimizer_steps_and_loads_back():
    model = minivit.ViT(**tiny_config())
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    before = {k: v.copy() for k, v in model.state_dict().items()}
    opt = minivit.Adam(model.parameters(), lr=1e-2)
    model.backward(minivit.cross_entropy(model.forward(x), [0, 1])[1])
    opt.step()
    after = model.state_dict()
    assert not np.array_equal(after["head.weight"], before["head.weight"])
    other = minivit.ViT(**tiny_config(), seed=99)
    other.load_state_dict({k: v.copy() for k, v in after.items()})
    np.testing.assert_array_equal(other.forward(x), model.forward(x))
    model.load_state_dict(before)            # and back: the flat buffers are updated in place
    np.testing.assert_array_equal(model.params["head.weight"], before["head.weight"])
    np.testing.assert_array_equal(model.parameters()[-2].data, before["head.weight"])


def test_load_state_dict_names_every_problem():
    model = minivit.ViT(**tiny_config())
    sd = {k: v.copy() for k, v in model.state_dict().items()}
    del sd["head.bias"], sd["norm.weight"]
    sd["extra.weight"] = np.zeros(3)
    sd["head.weight"] = np.zeros((4, 8))
    with pytest.raises(ValueError) as err:
        model.load_state_dict(sd)
    msg = str(err.value)
    assert "missing keys: norm.weight, head.bias" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "head.weight: expected (3, 8), got (4, 8)" in msg


def test_matches_pytorch_simplevit_forward_and_gradients():
    torch = pytest.importorskip("torch")
    from torch_simplevit import SimpleViT
    cfg = dict(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=3, num_classes=5)
    model = minivit.ViT(**cfg, dtype="float64", seed=1)
    ref = SimpleViT(**cfg).double()
    ref.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16))
    y = np.array([0, 1, 2, 4])
    logits = model.forward(x)
    loss, dlogits = minivit.cross_entropy(logits, y, label_smoothing=0.1)
    model.backward(dlogits)
    ref_logits = ref(torch.from_numpy(x))
    ref_loss = torch.nn.functional.cross_entropy(ref_logits, torch.from_numpy(y), label_smoothing=0.1)
    ref_loss.backward()
    np.testing.assert_allclose(logits, ref_logits.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert abs(float(loss) - ref_loss.item()) < 1e-12
    for name, p in ref.named_parameters():
        np.testing.assert_allclose(model.grads()[name], p.grad.numpy(), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2])
def test_model_with_a_conv_stem_gradchecks_and_runs_fast(backend, stride):
    from minivit.fast import FastRunner
    cfg = dict(img_size=8, patch_size=2, embed_dim=8, depth=2, num_heads=2, mlp_ratio=2.0,
               num_classes=3, stem_channels=4, stem_stride=stride)
    model = minivit.ViT(**cfg, dtype="float64", backend=backend, seed=1)
    assert list(model.state_dict())[:3] == ["stem.conv.weight", "stem.conv.bias", "patch_embed.proj.weight"]
    assert model.params["patch_embed.proj.weight"].shape == (8, 4, 2, 2)
    assert model.params["vit_embed.pos_embed"].shape == (1, (8 // stride // 2) ** 2 + 1, 8)
    report = gradcheck.check_model(model, batch_size=2, max_checks=12)
    assert report.passed, str(report)
    report = gradcheck.check_model(model, batch_size=3, max_checks=12, net=FastRunner(model))
    assert report.passed, str(report)
    with pytest.raises(ValueError, match="not divisible by patch_size 4 times the stem's reduction 2"):
        minivit.ViT(**{**cfg, "patch_size": 4, "img_size": 12, "stem_stride": 2})


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_a_two_conv_stem_gradchecks_and_runs_fast(backend, pool):
    """stem_layers=2: conv (3 -> S, stem_stride) + GELU, conv (S -> 2S, stride 2) + GELU."""
    from minivit.fast import FastRunner
    cfg = dict(img_size=8, patch_size=2, embed_dim=8, depth=2, num_heads=2, mlp_ratio=2.0,
               num_classes=3, stem_channels=3, stem_layers=2, pool=pool)
    model = minivit.ViT(**cfg, dtype="float64", backend=backend, seed=1)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(shapes)[:5] == ["stem.conv.weight", "stem.conv.bias", "stem.conv2.weight",
                                "stem.conv2.bias", "patch_embed.proj.weight"]
    assert shapes["stem.conv2.weight"] == (6, 3, 3, 3)
    assert shapes["patch_embed.proj.weight"] == (8, 6, 2, 2)
    assert shapes["vit_embed.pos_embed"] == (1, (8 // 2 // 2) ** 2 + 1, 8)
    report = gradcheck.check_model(model, batch_size=2, max_checks=12)
    assert report.passed, str(report)
    report = gradcheck.check_model(model, batch_size=3, max_checks=12, net=FastRunner(model))
    assert report.passed, str(report)
    # the fast path computes the reference's numbers, image gradient included
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8))
    dlogits = np.random.default_rng(1).standard_normal((3, 3))
    fast = FastRunner(model, threads=2)
    model.zero_grad()
    ref_logits = model.forward(x)
    ref_dx = model.backward(dlogits)
    ref_grads = {k: to_host(v).copy() for k, v in model.grads().items()}
    model.zero_grad()
    logits = fast.forward(x)
    dx = fast.backward(dlogits)
    np.testing.assert_allclose(to_host(logits), to_host(ref_logits), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(to_host(dx), to_host(ref_dx), rtol=1e-9, atol=1e-12)
    for k, g in model.grads().items():
        np.testing.assert_allclose(to_host(g), ref_grads[k], rtol=1e-9, atol=1e-12, err_msg=k)
    with pytest.raises(ValueError, match="not divisible by patch_size 3 times the stem's reduction 2"):
        minivit.ViT(**{**cfg, "patch_size": 3})


@pytest.mark.parametrize("stem", [0, 2])
def test_smaller_images_take_an_area_resized_position_embedding(backend, stem):
    """Progressive resizing: 4x4 images on a model built for 8x8 give a 2x2 (or 1x1) patch
    grid; the position embedding is area-resized, and the gradients are still exact."""
    from minivit.fast import FastRunner
    cfg = dict(img_size=8, patch_size=2, embed_dim=8, depth=2, num_heads=2, mlp_ratio=2.0,
               num_classes=3, stem_channels=stem)
    model = minivit.ViT(**cfg, dtype="float64", backend=backend, seed=2)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    for net in (model, FastRunner(model, threads=2)):
        report = gradcheck.check_model(model, x=x, max_checks=12, net=net)
        assert report.passed, str(report)
    # a 4x4 image whose 2x2 blocks are constant is the 8x8 image area-resized
    big = np.repeat(np.repeat(x, 2, axis=2), 2, axis=3)
    small, _ = resize.area_resize_forward(big, 4)
    np.testing.assert_allclose(small, x, rtol=1e-12)
    with pytest.raises(ValueError, match=r"images are 5x5, the model expects 8x8 \(or smaller "
                                         r"square images whose side is a multiple of 2\)"):
        model.forward(np.zeros((1, 3, 5, 5)))
    with pytest.raises(ValueError, match="images are 16x16, the model expects 8x8"):
        model.forward(np.zeros((1, 3, 16, 16)))


def test_sequence_pooling_adds_one_score_weight_trained_by_adamw_with_decay():
    """pool "seq": one weight [1, D] after the blocks (CCT's attention_pool, no bias: a bias
    cancels in the softmax), decayed, and left to AdamW when Muon takes the matrices; the
    head's weights over the patch tokens sum to 1 and follow the score."""
    from minivit.config import TrainConfig
    from minivit.train import make_optimizer
    model = minivit.ViT(**tiny_config(pool="seq"), dtype="float64")
    names = list(model.state_dict())
    assert names[names.index("norm.weight") - 1] == "attention_pool.weight"
    assert model.params["attention_pool.weight"].shape == (1, model.config.embed_dim)
    assert "attention_pool.weight" not in minivit.ViT(**tiny_config()).state_dict()
    opt = make_optimizer(TrainConfig.from_preset("hybrid", weight_decay=0.05), model)
    adamw = [p.name for g in opt.param_groups if g["weight_decay"] for p in g["params"]]
    assert "attention_pool.weight" in adamw
    assert "attention_pool.weight" not in opt.momentum_of and "blocks.0.mlp.0.weight" in opt.momentum_of
    # a score that singles out one token makes the pooled row that token
    h = np.zeros((1, 4, 3))
    h[0, 1:, 0] = [0.0, 50.0, 0.0]
    h[0, 1:, 1] = [1.0, 2.0, 3.0]
    pooled, cache = minivit.engine.layers.seq_pool_forward(h, np.array([[1.0, 0.0, 0.0]]))
    np.testing.assert_allclose(pooled, h[:, 2], atol=1e-12)
    np.testing.assert_allclose(cache.softmax.a.sum(axis=1), 1.0)
