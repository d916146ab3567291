"""checkpoint.py: .npz checkpoints with PyTorch's names that load without pickle, read back
exactly, say clearly what is wrong with a damaged, foreign or mismatched file, and are
written with the user's file mode; a damaged checkpoint.npz names what is still intact."""

import json
import os
import shlex
import stat

import numpy as np
import pytest

import minivit
from minivit import checkpoint as ckpt
from minivit import cli
from minivit.data import SAMPLE_FOLDER

from helpers import stopped_run


def test_checkpoint_round_trip_and_torch_names(tmp_path, backend):
    model = minivit.ViT(embed_dim=24, depth=2, num_heads=3, seed=5, backend=backend)
    opt = minivit.AdamW(model.parameters(), lr=1e-3)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32))
    model.backward(minivit.cross_entropy(model.forward(x), [0, 1, 2, 3])[1])
    opt.step()
    ckpt.save(tmp_path / "c.npz", model, {"epoch": 7}, optimizer=opt)
    loaded, meta = ckpt.load_model(tmp_path / "c.npz", backend=backend)
    assert meta["epoch"] == 7 and meta["optimizer"]["t"] == 1 and loaded.backend == backend
    np.testing.assert_array_equal(minivit.to_host(loaded.forward(x)), minivit.to_host(model.forward(x)))
    weights, optim, _ = ckpt.load(tmp_path / "c.npz")
    assert list(weights) == list(model.state_dict())          # PyTorch names, nothing else
    assert "m.head.weight" in optim
    with np.load(tmp_path / "c.npz", allow_pickle=False) as f:   # loads without pickle
        assert f["blocks.1.attn.in_proj_weight"].shape == (72, 24)


def test_bad_checkpoints_give_clear_errors(tmp_path):
    model = minivit.ViT(embed_dim=24, depth=1, num_heads=3)
    ckpt.save(tmp_path / "good.npz", model, {})
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[:len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="is truncated or damaged"):
        ckpt.load(tmp_path / "cut.npz")
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    with pytest.raises(ckpt.CheckpointError, match="is not a minivit checkpoint"):
        ckpt.load(tmp_path / "foreign.npz")
    with pytest.raises(ckpt.CheckpointError, match="does not exist") as err:
        ckpt.load(tmp_path / "absent.npz")
    assert isinstance(err.value, ValueError)


def test_checkpoint_from_another_configuration(tmp_path):
    model = minivit.ViT(embed_dim=24, depth=1, num_heads=3)
    ckpt.save(tmp_path / "c.npz", model, {})
    with np.load(tmp_path / "c.npz") as f:
        arrays = dict(f)
    meta = json.loads(bytes(arrays["minivit.meta"]).decode())
    meta["model"]["embed_dim"] = 48                       # says one model, holds another
    arrays["minivit.meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "other.npz", **arrays)
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_model(tmp_path / "other.npz")
    assert "state_dict does not match this model" in str(err.value)
    assert "patch_embed.proj.weight: expected (48, 3, 4, 4), got (24, 3, 4, 4)" in str(err.value)


def test_weights_load_into_the_pytorch_simplevit(tmp_path):
    torch = pytest.importorskip("torch")
    from torch_simplevit import SimpleViT
    model = minivit.ViT(embed_dim=24, depth=2, num_heads=3, seed=2)
    ckpt.save(tmp_path / "w.npz", model, {})
    ref = SimpleViT(embed_dim=24, depth=2, num_heads=3)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in ckpt.load_weights(tmp_path / "w.npz").items()})
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(ref(torch.from_numpy(x)).detach().numpy(), model.forward(x),
                               rtol=1e-4, atol=1e-5)


def test_a_runs_files_get_the_users_file_mode(run_dir):
    """Atomic writes go through a temporary file (mode 0600): the file in place has the mode
    any other file gets under the user's umask."""
    umask = os.umask(0)
    os.umask(umask)
    for name in ("checkpoint.npz", "metrics.jsonl", "summary.json"):
        assert stat.S_IMODE(os.stat(run_dir / name).st_mode) == 0o666 & ~umask, name


def test_a_damaged_checkpoint_names_what_is_intact_and_the_command_goes_on(straight, tmp_path, capsys):
    out = tmp_path / "run"
    stopped_run(out, straight)
    best = ckpt.load(out / "best.npz")[2]["epoch"]
    data = (out / "checkpoint.npz").read_bytes()
    (out / "checkpoint.npz").write_bytes(data[:len(data) // 2])         # cut short
    assert cli.main(["train", "--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    command = (f"minivit train --config {out}/config.json --init-from {out}/best.npz "
               f"--epochs {3 - best} --data {SAMPLE_FOLDER}")
    assert err == (f"minivit train: error: {out}/checkpoint.npz is truncated or damaged, or not a .npz "
                   f"checkpoint at all (it is not a whole zip archive), so the run cannot resume "
                   f"exactly; still intact: {out}/best.npz (epoch {best}): go on from the latest in a "
                   f"new run folder (its weights; the optimizer state and the place in the schedule "
                   f"were in checkpoint.npz): {command}\n")
    argv = shlex.split(command)[1:] + ["--out", str(tmp_path / "next"), "--no-progress", "--no-plots"]
    assert cli.main(argv) == 0
    assert f"Starting from the weights of {out}/best.npz (epoch {best})" in capsys.readouterr().out
    (out / "best.npz").write_bytes(b"junk")
    assert cli.main(["train", "--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.endswith(f", and no other checkpoint of {out} is intact: start the run again: minivit "
                        f"train --config {out}/config.json\n"), err

