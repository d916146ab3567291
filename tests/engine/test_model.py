"""engine/model.py: the ViT's parameters by name and shape, initialization, determinism,
float32 against float64, gradients accumulating, state_dict, PyTorch's SimpleViT.
(Configuration errors: test_config.py; bad input: test_model_inputs.py; gradients:
test_gradcheck.py.)"""

import numpy as np
import pytest

import minivit
from minivit.engine.backend import to_host

from helpers import tiny_config


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


@pytest.mark.parametrize("stride, layers", [(1, 1), (2, 1), (1, 2)])
def test_a_conv_stem_adds_its_convs_before_the_patch_embedding(stride, layers):
    """stem_layers convs, each 3x3 + GELU: the first gives stem_channels at stem_stride,
    each later one doubles the channels at stride 2; the patch grid shrinks alike."""
    model = minivit.ViT(img_size=8, patch_size=2, embed_dim=8, depth=2, num_heads=2, num_classes=3,
                        stem_channels=3, stem_stride=stride, stem_layers=layers)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    convs = ["stem.conv", "stem.conv2"][:layers]
    assert list(shapes)[:2 * layers + 1] == [f"{c}.{p}" for c in convs for p in ("weight", "bias")] + [
        "patch_embed.proj.weight"]
    assert shapes["stem.conv.weight"] == (3, 3, 3, 3)
    if layers == 2:
        assert shapes["stem.conv2.weight"] == (6, 3, 3, 3)
    reduction = stride * 2 ** (layers - 1)
    assert shapes["patch_embed.proj.weight"] == (8, 3 * 2 ** (layers - 1), 2, 2)
    assert shapes["vit_embed.pos_embed"] == (1, (8 // reduction // 2) ** 2 + 1, 8)
    assert model.forward(np.zeros((2, 3, 8, 8))).shape == (2, 3)


def test_the_pooling_heads_keep_simplevits_layout_but_sequence_pooling():
    """pool "mean" reads other tokens with the same parameters; pool "seq" adds one weight
    [1, D] after the blocks (CCT's attention_pool, no bias: it would cancel in the softmax)."""
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    cls = minivit.ViT(**tiny_config(), dtype="float64", seed=3)
    mean = minivit.ViT(**tiny_config(pool="mean"), dtype="float64", seed=3)
    assert list(mean.state_dict()) == list(cls.state_dict())
    assert not np.allclose(mean.forward(x), cls.forward(x))
    seq = minivit.ViT(**tiny_config(pool="seq"))
    names = list(seq.state_dict())
    assert names[names.index("norm.weight") - 1] == "attention_pool.weight"
    assert seq.params["attention_pool.weight"].shape == (1, seq.config.embed_dim)
    assert set(names) - set(cls.state_dict()) == {"attention_pool.weight"}


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
