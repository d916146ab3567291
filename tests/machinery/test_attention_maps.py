"""attention_maps.py and `minivit attention`: what the head's reader attends to, head by
head and rolled out over the blocks, drawn over the image beside its checkpoint."""

import numpy as np
import pytest

import minivit
from minivit import attention_maps, cli
from minivit import checkpoint as ckpt

H = minivit.to_host


def test_attention_maps_rows_sum_to_one_and_rollout_shape(backend):
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


@pytest.mark.parametrize("pool", ["mean", "seq"])
def test_attention_maps_follow_what_a_pooling_head_reads(backend, pool):
    """With mean or sequence pooling the head reads the patch tokens, weighted by readout
    [B, P] (1/P each, or the learned softmax); the maps mix those tokens' rows alike."""
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


def test_attention_command_draws_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    model = minivit.ViT(embed_dim=16, depth=2, num_heads=2)
    ckpt.save(tmp_path / "m.npz", model, {"mean": [0.5] * 3, "std": [0.25] * 3, "epoch": 1})
    out = tmp_path / "att.png"
    assert cli.main(["attention", "--checkpoint", str(tmp_path / "m.npz"), "--index", "2",
                     "--layer", "0", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "heads of block 0, as the class token attends" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["attention", "--checkpoint", str(tmp_path / "m.npz"), "--layer", "5"])
    assert "--layer 5 is out of range: the model has 2 blocks" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["attention", "--checkpoint", str(tmp_path / "m.npz"), "--index", "500"])
    assert "--index 500 is out of range: the test set has 500 images" in capsys.readouterr().err
    seq = minivit.ViT(embed_dim=16, depth=2, num_heads=2, pool="seq")
    ckpt.save(tmp_path / "s.npz", seq, {"mean": [0.5] * 3, "std": [0.25] * 3, "epoch": 1})
    assert cli.main(["attention", "--checkpoint", str(tmp_path / "s.npz"), "--out", str(out)]) == 0
    assert "heads of block 1, as the seq pooling's tokens attend" in capsys.readouterr().out


def test_attention_maps_go_beside_their_checkpoint(run_dir, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["attention", "--checkpoint", str(run_dir / "best.npz"), "--index", "1"]) == 0
    assert (run_dir / "attention-test1.png").exists()
    if ckpt.SHIPPED_MODEL.exists():
        assert cli.main(["attention", "--index", "1"]) == 0
        assert (tmp_path / "runs" / "shipped-model" / "attention-test1.png").exists()
    assert not list(tmp_path.glob("attention-*.png"))               # nothing in the current folder
