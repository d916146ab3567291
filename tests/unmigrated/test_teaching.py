"""Teaching material: the gradcheck command, attention maps, the walkthrough, the docs."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import minivit
from minivit import attention_maps, cli
from minivit.engine import gradcheck

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gradcheck_command_prints_a_table(capsys):
    assert cli.main(["gradcheck", "--layer", "attention"]) == 0
    out = capsys.readouterr().out
    assert "attention  (float64, eps=3e-06, pass if rel err <= 1e-07)" in out
    header = next(l for l in out.splitlines() if l.startswith("tensor"))
    assert header.split() == ["tensor", "shape", "checked", "max", "abs", "err", "rel", "err", "result"]
    row = next(l for l in out.splitlines() if l.startswith("in_proj_weight"))
    assert row.split()[1:3] == ["24x8", "192"] and row.split()[-1] == "pass"
    assert out.strip().endswith("1 passed, 0 failed")


def test_gradcheck_command_model_and_float32_explanation(capsys):
    assert cli.main(["gradcheck", "--model", "--max-checks", "5"]) == 0
    out = capsys.readouterr().out
    assert "model vit, reference: SimpleViT" in out and "blocks.1.mlp.2.weight" in out
    assert out.strip().endswith(f"{2 * len(gradcheck.MODELS) + 1} passed, 0 failed")
    assert cli.main(["gradcheck", "--layer", "gelu", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "Why float32 needs looser marks" in out
    assert re.search(r"in float32 with eps = 1e-6 the worst relative error is \d\.\de-0[0-2]", out)


def test_gradcheck_command_fails_loudly_on_a_wrong_gradient(capsys, monkeypatch):
    from minivit.engine import layers
    real = layers.softmax_backward
    monkeypatch.setattr(layers, "softmax_backward", lambda da, a: real(da, a) * 1.01)
    assert cli.main(["gradcheck", "--layer", "softmax"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "0 passed, 1 failed: softmax" in out


def test_attention_maps_rows_sum_to_one_and_rollout_shape(backend):
    H = minivit.to_host
    model = minivit.ViT(img_size=16, patch_size=4, embed_dim=24, depth=3, num_heads=3, backend=backend)
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16))
    logits, maps, readout = model.attention(x)
    assert readout is None                               # the head reads the class token
    np.testing.assert_allclose(H(logits), H(model.forward(x)), rtol=1e-5, atol=1e-6)
    assert len(maps) == 3 and all(a.shape == (2, 3, 17, 17) for a in maps)
    for a in maps:
        np.testing.assert_allclose(H(a.sum(-1)), 1.0, rtol=1e-5)
    heads = attention_maps.reader_attention(maps[-1])
    assert heads.shape == (2, 3, 16)
    roll = H(attention_maps.rollout(maps))
    assert roll.shape == (2, 16) and np.all(roll > 0) and np.all(roll.sum(-1) < 1)
    assert attention_maps.to_grid(roll).shape == (2, 4, 4)


def test_rollout_of_identity_attention_is_uniform_over_nothing():
    eye = np.broadcast_to(np.eye(5), (1, 2, 5, 5))      # every token attends to itself
    roll = attention_maps.rollout([eye, eye])
    np.testing.assert_allclose(roll, 0.0)                # the class token never sees a patch
    uniform = np.full((1, 2, 5, 5), 0.2)
    np.testing.assert_allclose(attention_maps.rollout([uniform])[0], 0.1)   # (0.2 + 0) / 2


def test_attention_command_draws_a_png(tmp_path, capsys):
    from minivit import checkpoint
    model = minivit.ViT(embed_dim=16, depth=2, num_heads=2)
    checkpoint.save(tmp_path / "m.npz", model, {"mean": [0.5] * 3, "std": [0.25] * 3, "epoch": 1})
    out = tmp_path / "att.png"
    assert cli.main(["attention", "--checkpoint", str(tmp_path / "m.npz"), "--index", "2",
                     "--layer", "0", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "heads of block 0" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["attention", "--checkpoint", str(tmp_path / "m.npz"), "--layer", "5"])
    assert "--layer 5 is out of range: the model has 2 blocks" in capsys.readouterr().err
    seq = minivit.ViT(embed_dim=16, depth=2, num_heads=2, pool="seq")
    checkpoint.save(tmp_path / "s.npz", seq, {"mean": [0.5] * 3, "std": [0.25] * 3, "epoch": 1})
    assert cli.main(["attention", "--checkpoint", str(tmp_path / "s.npz"), "--out", str(out)]) == 0
    assert "heads of block 1, as the seq pooling's tokens attend" in capsys.readouterr().out


def test_walkthrough_example_runs():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "walkthrough.py")],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr
    for piece in ("patch embedding", "multi-head self-attention", "transformer block", "the whole ViT"):
        assert f"== {piece}" in proc.stdout
    assert "FAIL" not in proc.stdout and "Every piece passed its gradient check." in proc.stdout
    assert "attention  (2, 2, 5, 5)" in proc.stdout
    assert "the block is the pieces above, x1 + mlp(norm2(x1)): True" in proc.stdout


def test_docs_link_to_real_functions_and_real_checks():
    with open(os.path.join(ROOT, "docs", "gradients.md")) as f:
        doc = f.read()
    links = re.findall(r"\[`([\w.]+)`\]\(\.\./minivit/(\w+)\.py\)", doc)
    assert len(links) >= 25
    for name, module in links:
        obj = __import__(f"minivit.{module}", fromlist=["x"])
        for part in name.split("."):
            obj = getattr(obj, part)                 # raises if the doc names a missing function
    checked = set(re.findall(r"minivit gradcheck --layer (\w+)", doc))
    assert checked == set(gradcheck.LAYERS)          # every layer has its check command
    assert "minivit gradcheck --model" in doc
    sections = re.split(r"\n## ", doc)[2:]           # after the notation
    assert all("Check: `" in s for s in sections)    # each derivation ends with its command


def test_gradcheck_model_checks_what_the_presets_train(capsys):
    """One command covers every part the presets (and the training options) use: the
    stem at stride 1 and 2, smaller images (the resized position embedding), drop path,
    mean and sequence pooling, through the reference and the fast path, and the blocked GELU."""
    from minivit.config import POOLS, PRESETS
    cases = [minivit.ViTConfig(**fields) for fields, _, _, _ in gradcheck.MODELS.values()]
    low_res = [side < f["img_size"] for f, side, _, _ in gradcheck.MODELS.values()]
    strides = {stride for c in cases for _, _, _, stride in c.stem_convs}
    for preset in PRESETS.values():
        if preset.get("stem_channels"):
            assert preset.get("stem_stride", 1) in strides
    assert strides == {1, 2} and any(low_res) and {c.pool for c in cases} == set(POOLS)
    assert any(c.drop_path > 0 and seed is not None
               for c, (_, _, seed, _) in zip(cases, gradcheck.MODELS.values()))
    assert cli.main(["gradcheck", "--model", "--max-checks", "3"]) == 0
    out = capsys.readouterr().out
    for name in gradcheck.MODELS:
        assert f"model {name}, reference:" in out and f"model {name}, fast:" in out
    for tensor in ("stem.conv.weight", "stem.conv2.weight", "input                          2x3x4x4"):
        assert tensor in out
    assert "blocked GELU (float32, 262,144 elements" in out
    assert cli.main(["gradcheck", "--model", "--dtype", "float32", "--max-checks", "20"]) == 0


def test_the_blocked_gelu_check_reaches_the_blocked_path_and_catches_an_error(monkeypatch):
    from minivit.fast import kernels
    calls = []
    real = kernels.blocked_gelu
    monkeypatch.setattr(kernels, "blocked_gelu", lambda x: calls.append(x.size) or real(x))
    assert gradcheck.check_blocked_gelu().passed
    assert calls and calls[0] > kernels.BLOCK                   # several blocks
    real_cdf = kernels.normal_cdf
    monkeypatch.setattr(kernels, "normal_cdf", lambda x, gauss: real_cdf(x, gauss) + np.float32(1e-5))
    report = gradcheck.check_blocked_gelu()
    assert not report["GELU(x)"].passed and not report["GELU'(x)"].passed


@pytest.mark.parametrize("pool", ["mean", "seq"])
def test_attention_maps_follow_what_a_pooling_head_reads(backend, pool):
    """With mean or sequence pooling the head reads the patch tokens, weighted by readout
    [B, P] (1/P each, or the learned softmax); the maps mix those tokens' rows alike."""
    H = minivit.to_host
    model = minivit.ViT(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=3, pool=pool,
                        dtype="float64", backend=backend, seed=1)
    if pool == "seq":       # a score that prefers some tokens: the readout is not uniform
        model.params["attention_pool.weight"][...] = model.xp.asarray(
            np.random.default_rng(0).standard_normal((1, 24)))
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16))
    logits, maps, readout = model.attention(x)
    r = H(readout)
    assert r.shape == (2, 16) and np.allclose(r.sum(axis=1), 1.0)
    assert np.allclose(r, 1 / 16) == (pool == "mean")
    a = H(maps[-1])
    want = np.einsum("bp,bhpn->bhn", r, a[:, :, 1:, 1:])          # the readout's mix of rows
    np.testing.assert_allclose(H(attention_maps.reader_attention(maps[-1], readout)), want, rtol=1e-12)
    roll = H(attention_maps.rollout(maps, readout))
    assert roll.shape == (2, 16) and np.all(roll > 0) and np.all(roll.sum(-1) <= 1 + 1e-12)
    one_hot = np.zeros((1, 16))
    one_hot[0, 3] = 1.0                                            # reading token 4 alone
    uniform = np.full((1, 2, 17, 17), 1 / 17)
    np.testing.assert_allclose(attention_maps.reader_attention(uniform, one_hot), 1 / 17)
