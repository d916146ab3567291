"""engine/gradcheck.py: every backward of the engine against finite differences (each
layer of LAYERS, whole models), and the check itself: it catches wrong gradients and
reports them. (The fast path through the same checks: tests/fast/test_runner.py; the
`minivit gradcheck` command: tests/machinery/test_cli_gradcheck.py.)"""

import numpy as np
import pytest

import minivit
from minivit.engine import gradcheck, layers
from minivit.engine.config import POOLS, ViTConfig
from minivit.engine.draws import StepDraws

from helpers import STEMS, stem_model, tiny_config


@pytest.mark.parametrize("name", list(gradcheck.LAYERS))
def test_gradcheck_float64(name, backend):
    report = gradcheck.check_layer(name, "float64", backend)
    assert report.passed, str(report)
    assert report.max_rel_err <= 1e-7
    assert all(r.checked == int(np.prod(r.shape)) for r in report.results)  # every element


@pytest.mark.parametrize("name", list(gradcheck.LAYERS))
def test_gradcheck_float32_within_its_looser_tolerance(name):
    report = gradcheck.check_layer(name, "float32")
    assert report.passed, str(report)


def test_gradcheck_catches_a_wrong_backward():
    """The check is not vacuous: a backward with a slightly wrong weight gradient fails."""
    def bad_backward(dy, cache):
        dx, dw, db = layers.linear_backward(dy, cache)
        return dx, dw * 1.001, db
    rng = np.random.default_rng(0)
    inputs = {"x": rng.standard_normal((3, 4)), "w": rng.standard_normal((4, 4)),
              "b": rng.standard_normal(4)}
    report = gradcheck.check(layers.linear_forward, bad_backward, inputs)
    assert not report.passed
    assert not report["w"].passed and report["x"].passed and report["b"].passed
    assert "SOME GRADIENTS ARE WRONG" in str(report)


def test_gradcheck_catches_a_missing_mean_term_in_layernorm():
    def bad_backward(dy, cache):
        xhat, rstd, w = cache.xhat, cache.rstd, cache.w
        return rstd * dy * w, (dy * xhat).reshape(-1, w.shape[0]).sum(0), dy.reshape(-1, w.shape[0]).sum(0)
    _, _, inputs = gradcheck.LAYERS["layernorm"](np.random.default_rng(0))
    assert not gradcheck.check(layers.layernorm_forward, bad_backward, inputs)["x"].passed


def test_gradcheck_report_table_and_sampling():
    report = gradcheck.check_layer("attention", max_checks=10)
    assert report["in_proj_weight"].checked == 10
    text = str(report)
    assert text.splitlines()[0].startswith("attention  (float64")
    assert "in_proj_weight" in text and "pass" in text and "all passed" in text
    with pytest.raises(ValueError, match="unknown layer 'convolution': choose one of linear"):
        gradcheck.check_layer("convolution")


# ------------------------------------------------------------------------ whole models

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


def test_model_gradcheck_with_stochastic_depth(backend):
    """draws_seed: every evaluation of the check runs the same step's draws, in which some
    branch really is skipped."""
    model = minivit.ViT(**tiny_config(depth=3), dtype="float64", drop_path=0.6, seed=1, backend=backend)
    report = gradcheck.check_model(model, batch_size=4, seed=2, draws_seed=3)
    assert report.passed, str(report)
    draws = StepDraws.sample(model.config, 4, np.random.default_rng(3), model.xp, model.dtype)
    assert any(float(m.min()) == 0.0 for m in draws.drop_path[2])


@pytest.mark.parametrize(**STEMS)
def test_models_with_a_conv_stem_gradcheck(backend, stem):
    model = stem_model(backend, stem)
    report = gradcheck.check_model(model, batch_size=2, max_checks=12)
    assert report.passed, str(report)
    assert report["stem.conv.weight"].checked == 12


@pytest.mark.parametrize("stem", [0, 2])
def test_smaller_images_gradcheck_through_the_resized_position_embedding(backend, stem):
    """Progressive resizing: 4x4 images on a model built for 8x8 (with or without a conv
    stem) give a 2x2 patch grid, the position embedding area-resized from 4x4; the
    gradients are still exact."""
    model = minivit.ViT(img_size=8, patch_size=2, embed_dim=8, depth=2, num_heads=2, mlp_ratio=2.0,
                        num_classes=3, stem_channels=stem, dtype="float64", backend=backend, seed=2)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    report = gradcheck.check_model(model, x=x, max_checks=12)
    assert report.passed, str(report)
    assert report["input"].shape == (2, 3, 4, 4)


def test_the_model_checks_cover_what_the_presets_train():
    """gradcheck.MODELS (`minivit gradcheck --model`) covers every part the presets and the
    training options use: the stem at stride 1 and 2, smaller images (the resized position
    embedding), drop path with its draws, every pooling."""
    from minivit.config import PRESETS
    cases = [ViTConfig(**fields) for fields, _, _, _ in gradcheck.MODELS.values()]
    low_res = [side < f["img_size"] for f, side, _, _ in gradcheck.MODELS.values()]
    strides = {stride for c in cases for _, _, _, stride in c.stem_convs}
    for preset in PRESETS.values():
        if preset.get("stem_channels"):
            assert preset.get("stem_stride", 1) in strides
    assert strides == {1, 2} and any(low_res) and {c.pool for c in cases} == set(POOLS)
    assert any(c.drop_path > 0 and seed is not None
               for c, (_, _, seed, _) in zip(cases, gradcheck.MODELS.values()))
