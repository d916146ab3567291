"""Bad input, numerical faults and interrupted runs: every case gets a clear message and no
saved file is ever lost."""

import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest

import minivit
from minivit import checkpoint as ckpt
from minivit import train as train_module
from minivit.config import TrainConfig
from minivit.errors import MinivitError
from minivit.train import train
from minivit.files import read_jsonl


def read_metrics(run_dir):
    return read_jsonl(run_dir / "metrics.jsonl")

from conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0, batch_size=32, limit_train=256,
            eval_batch_size=128)


def quiet(*args):
    pass


# ------------------------------------------------------------------------ model input

@pytest.mark.parametrize("x, error, message", [
    (np.zeros((3, 8, 8)), ValueError, "images must have shape [B, 3, 8, 8] (batch, channels, height, width), got (3, 8, 8); add a batch axis"),
    (np.zeros((2, 1, 8, 8)), ValueError, "images have 1 channels, the model expects 3"),
    (np.zeros((2, 8, 8, 3)), ValueError, "channels last? use x.transpose(0, 3, 1, 2)"),
    (np.zeros((2, 3, 16, 16)), ValueError, "images are 16x16, the model expects 8x8 (or smaller square images whose side is a multiple of 4): resize them, or build the ViT with img_size=16"),
    (np.zeros((2, 3, 6, 6)), ValueError, "images are 6x6, the model expects 8x8 (or smaller square images whose side is a multiple of 4)"),
    (np.zeros((0, 3, 8, 8)), ValueError, "empty batch"),
    (np.zeros((2, 3, 8, 8), np.uint8), TypeError, "images are uint8 (raw 0..255 pixels): normalize them"),
    (np.zeros((2, 3, 8, 8), np.int64), TypeError, "images must be floating point, got int64"),
    (np.full((2, 3, 8, 8), np.nan), ValueError, "images contain NaN or Inf values"),
])
def test_bad_images(x, error, message):
    model = minivit.ViT(**tiny_config())
    with pytest.raises(error) as err:
        model.forward(x)
    assert message in str(err.value)


def test_lists_of_floats_are_accepted():
    model = minivit.ViT(**tiny_config())
    assert model.forward(np.zeros((1, 3, 8, 8)).tolist()).shape == (1, 3)


def test_gpu_array_given_to_a_numpy_model():
    class FakeGpuArray:                       # what a CuPy array looks like from outside
        __cuda_array_interface__ = {}
        shape, dtype = (1, 3, 8, 8), np.float32
    with pytest.raises(TypeError, match=r"a CuPy \(GPU\) array was given to a NumPy model: move it "
                                        r"with minivit.to_host\(x\)"):
        minivit.ViT(**tiny_config()).forward(FakeGpuArray())


@pytest.mark.gpu
def test_numpy_array_given_to_a_cupy_model_is_moved(backend):
    if backend != "cupy":
        pytest.skip("CuPy only")
    model = minivit.ViT(**tiny_config(), backend="cupy")
    assert minivit.to_host(model.forward(np.zeros((1, 3, 8, 8)))).shape == (1, 3)


@pytest.mark.parametrize("labels, error, message", [
    (np.array([0.0, 1.0]), TypeError, "labels must be integer class indices, got float64"),
    (np.array([[0], [1]]), ValueError, "labels must have shape (2,), one per logits row, got (2, 1)"),
    (np.array([0, 3]), ValueError, "labels must lie in [0, 3), got values from 0 to 3"),
    (np.array([-1, 0]), ValueError, "labels must lie in [0, 3), got values from -1 to 0"),
    (np.array([0, 1, 2]), ValueError, "labels must have shape (2,)"),
])
def test_bad_labels(labels, error, message):
    with pytest.raises(error) as err:
        minivit.cross_entropy(np.zeros((2, 3)), labels)
    assert message in str(err.value)


def test_gradient_of_the_wrong_shape():
    model = minivit.ViT(**tiny_config())
    model.forward(np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match=r"dlogits must have the logits' shape \(2, 3\), got \(2, 4\)"):
        model.backward(np.zeros((2, 4)))


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


# --------------------------------------------------------------------------- faults

def _nan_at(step_bad, where):
    real = train_module.cross_entropy
    calls = {"n": 0}

    def poisoned(logits, labels, *smoothing):
        loss, dlogits = real(logits, labels, *smoothing)
        if not smoothing:                 # evaluation's calls pass no smoothing: not a step
            return loss, dlogits
        calls["n"] += 1
        if calls["n"] == step_bad:
            if where == "loss":
                loss = loss * np.nan
            else:
                dlogits = dlogits * np.inf
        return loss, dlogits
    return poisoned


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # the poisoned step's NaN arithmetic
@pytest.mark.parametrize("where, message", [
    ("loss", "the loss is nan"),
    ("grad", "the gradient of head.bias (and 19 more tensors) holds NaN or Inf"),
])
def test_nan_stops_within_one_step_and_keeps_the_checkpoint(tmp_path, monkeypatch, where, message,
                                                            backend):
    steps_per_epoch = 230 // 32                         # 256 images, 10% held out
    monkeypatch.setattr(train_module, "cross_entropy", _nan_at(steps_per_epoch + 3, where))
    cfg = TrainConfig.from_preset("sample", epochs=3, **TINY)
    with pytest.raises(MinivitError) as err:
        train(cfg, out=tmp_path / "run", progress=False, plots=False, log=quiet, backend=backend)
    text = str(err.value)
    assert f"step {steps_per_epoch + 3} (epoch 2, batch 3): {message}" in text
    assert "the last good checkpoint" in text and "is intact" in text
    _, _, meta = ckpt.load(tmp_path / "run" / "checkpoint.npz")
    assert meta["epoch"] == 1 and meta["step"] == steps_per_epoch


def test_ctrl_c_mid_epoch_saves_and_resumes_exactly(tmp_path, backend):
    cfg = TrainConfig.from_preset("sample", epochs=2, **TINY)
    train(cfg, out=tmp_path / "straight", progress=False, plots=False, log=quiet, backend=backend)

    def press_ctrl_c(step):
        if step == 10:                                   # epoch 2, batch 3
            os.kill(os.getpid(), signal.SIGINT)
    logs = []
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out=tmp_path / "cut", progress=False, plots=False, log=logs.append,
              on_step=press_ctrl_c, backend=backend)
    assert any("SIGINT: saved" in m and "epoch 2, batch 3 of 7" in m for m in logs)
    _, _, meta = ckpt.load(tmp_path / "cut" / "checkpoint.npz")
    assert meta["step"] == 10 and meta["in_epoch"]["batch"] == 3
    train(None, out=tmp_path / "cut", resume=True, progress=False, plots=False, log=quiet,
          backend=backend)
    a, oa, _ = ckpt.load(tmp_path / "straight" / "checkpoint.npz")
    b, ob, _ = ckpt.load(tmp_path / "cut" / "checkpoint.npz")
    for k in list(a) + list(oa):
        np.testing.assert_array_equal(a.get(k, oa.get(k)), b.get(k, ob.get(k)), err_msg=k)
    ma, mb = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "cut")
    assert [m["train_loss"] for m in ma] == [m["train_loss"] for m in mb]


def _start(out, *extra):
    cmd = [sys.executable, "-m", "minivit", "train", "--out", str(out), "--no-progress", "--no-plots",
           "--epochs", "4", "--embed-dim", "16", "--depth", "1", "--num-heads", "2",
           "--mlp-ratio", "2", "--batch-size", "32", "--limit-train", "1200", *extra]
    env = dict(os.environ, PYTHONPATH=ROOT, MINIVIT_DATA="")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)


def _wait_for(path, proc, timeout=120):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout
        time.sleep(0.05)


def _wait_for_epochs(out, n, proc, timeout=120):
    t0 = time.time()
    while len(read_metrics(out)) < n and proc.poll() is None:
        assert time.time() - t0 < timeout
        time.sleep(0.02)


def test_sigkill_at_any_moment_never_corrupts_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    rng = np.random.default_rng(0)
    proc = _start(out, "--epochs", "8")
    kills = 0
    for attempt in range(3):
        _wait_for_epochs(out, len(read_metrics(out)) + 1, proc)     # it made progress
        time.sleep(float(rng.uniform(0.0, 0.3)))                    # then a random moment
        kills += proc.poll() is None
        proc.kill()                                                 # SIGKILL
        proc.wait()
        _, _, meta = ckpt.load(out / "checkpoint.npz")              # whole and readable
        epochs = [m["epoch"] for m in read_metrics(out)]            # every line whole
        assert epochs == list(range(1, len(epochs) + 1))
        assert len(epochs) - 1 <= meta["epoch"] <= len(epochs)     # metrics never behind
        proc = _start(out, "--resume")
    assert kills >= 2                                               # really cut short
    assert proc.wait(timeout=300) == 0, proc.communicate()
    assert [m["epoch"] for m in read_metrics(out)] == list(range(1, 9))
    assert (out / "summary.json").exists()


def test_ctrl_c_in_a_real_process_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    proc = _start(out, "--epochs", "30")
    _wait_for(out / "checkpoint.npz", proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "SIGINT: saved" in stdout or "SIGINT: stopped after epoch" in stdout
    assert "interrupted; every checkpoint on disk is complete" in stderr
    assert "Traceback" not in stderr
    _, _, meta = ckpt.load(out / "checkpoint.npz")
    assert meta["step"] > 0


def test_memory_stays_flat_over_epochs(tmp_path):
    cfg = TrainConfig.from_preset("sample", epochs=8, **TINY)
    sizes = []
    tracemalloc.start()
    try:
        train(cfg, out=tmp_path / "run", progress=False, plots=False, log=quiet,
              on_epoch=lambda record: sizes.append(tracemalloc.get_traced_memory()[0]))
    finally:
        tracemalloc.stop()
    growth = sizes[-1] - sizes[2]
    assert growth < 1_000_000, f"traced memory grew by {growth} bytes from epoch 3 to 8: {sizes}"
