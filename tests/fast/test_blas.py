"""fast/blas.py: oneMKL's products equal NumPy's on every layout the fast path gives them,
the fast path on oneMKL equals the engine, and the choice between the two BLAS libraries
(MINIVIT_BLAS, else timed) says what it chose. The tests that need oneMKL run when the
mkl wheel is installed (`pip install minivit[mkl]`, part of [full]: CI runs them)."""

import os
import subprocess
import sys

import numpy as np
import pytest

import minivit
from minivit.engine.errors import BadValue, MissingPackage
from minivit.fast import blas, check

from helpers import tiny_config

needs_mkl = pytest.mark.skipif(blas.find_mkl() is None, reason="oneMKL not installed (pip install minivit[mkl])")


@pytest.fixture(autouse=True)
def keep_the_choice(monkeypatch):
    saved = dict(blas._use)
    monkeypatch.delenv(blas.ENV_VAR, raising=False)
    yield
    blas._use.update(saved)


def _layouts(rng, dtype):
    """(a, b, out or None) as the fast path gives them: plain, transposed weights and
    gradients, heads read as strided views, broadcast stacks, outputs into views."""
    r = lambda *s: rng.standard_normal(s).astype(dtype)       # noqa: E731
    x, w, dy = r(37, 12), r(20, 12), r(37, 20)
    qkv = r(3, 9, 3, 2, 4)                                      # [B, N, 3, h, d]
    heads = qkv.transpose(2, 0, 3, 1, 4)                        # [3, B, h, N, d] views
    o = np.empty((3, 9, 2, 4), dtype=dtype)
    a = r(3, 2, 9, 9)
    return [
        (x, w.T, None),                                         # x W^T
        (dy.T, x, np.empty((20, 12), dtype=dtype)),             # dW = dy^T x, into a buffer
        (dy, w, None),                                          # dx = dy W
        (x[::2], w.T, None),                                    # rows a stride apart: NumPy's
        (heads[0], heads[1].transpose(0, 1, 3, 2), None),       # q k^T on views
        (a, heads[2], o.transpose(0, 2, 1, 3)),                 # a v into merge_heads' layout
        (a.transpose(0, 1, 3, 2), heads[2], np.empty((3, 2, 9, 4), dtype=dtype)),
        (a[:, :, :1], heads[1], None),                          # one query row
        (r(5, 4, 6), r(6, 3), None),                            # a stack times one matrix
        (r(1, 4, 6), r(5, 6, 3), None),                         # broadcast the other way
    ]


@needs_mkl
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_onemkl_products_equal_numpys_on_every_layout(dtype):
    rng = np.random.default_rng(0)
    blas.set_blas("mkl")
    ran = 0
    for a, b, out in _layouts(rng, dtype):
        want = np.matmul(a, b)
        got = blas.matmul(a, b, out=out)
        if out is not None:
            assert got is out
        assert got.dtype == dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
        ran += blas.mkl_matmul(a, b, None if out is None else out.copy()) is not None
    assert ran >= 8                  # oneMKL itself took nearly all (not NumPy's fallback)
    assert blas.mkl_matmul(np.ones((3, 4), np.int64), np.ones((4, 2), np.int64), None) is None
    with pytest.raises(ValueError):  # a shape mismatch is NumPy's error
        blas.matmul(np.ones((3, 4), np.float32), np.ones((5, 2), np.float32))


@needs_mkl
def test_an_out_numpy_would_copy_or_refuse_is_left_to_numpy():
    """An out overlapping an operand (NumPy computes from a copy) or read-only (NumPy refuses
    it) never reaches oneMKL."""
    blas.set_blas("mkl")
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    want = a @ b
    assert blas.mkl_matmul(a, b, a) is None
    np.testing.assert_allclose(blas.matmul(a, b, out=a), want, rtol=1e-12)
    stack = rng.standard_normal((2, 4, 4))
    want = stack @ stack[0]
    np.testing.assert_allclose(blas.matmul(stack, stack[0].copy(), out=stack), want, rtol=1e-12)
    frozen = np.zeros((4, 4))
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        blas.matmul(a, b, out=frozen)


@needs_mkl
def test_onemkl_loads_once_for_racing_threads_and_whatever_its_environment_says():
    """Four threads asking at once all get the library; MKL_INTERFACE_LAYER=ILP64 (64-bit
    ints, which the typed calls do not pass) and a threading layer in the environment are
    overridden, so the products stay right."""
    code = ("import threading, numpy as np\n"
            "from minivit.fast import blas\n"
            "got = []\n"
            "ts = [threading.Thread(target=lambda: got.append(blas.find_mkl() is not None)) for _ in range(4)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n"
            "blas.set_blas('mkl')\n"
            "a, b = np.arange(20.0).reshape(5, 4), np.arange(12.0).reshape(4, 3)\n"
            "s = np.arange(24.0).reshape(2, 3, 4)\n"
            "print(got, np.array_equal(blas.matmul(a, b), a @ b), np.array_equal(blas.matmul(s, b), s @ b))\n")
    env = dict(os.environ, MKL_INTERFACE_LAYER="ILP64", MKL_THREADING_LAYER="INTEL")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "[True, True, True, True] True True"


@needs_mkl
@pytest.mark.parametrize("kwargs", [{}, {"pool": "seq", "stem_channels": 4}, {"drop_path": 0.5}])
def test_the_fast_path_on_onemkl_equals_the_engine(kwargs):
    blas.set_blas("mkl")
    model = minivit.ViT(**tiny_config(depth=2, **kwargs), dtype="float32", seed=1)
    assert check.check_against_engine(model, batch=3) is None
    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8))
    diffs = check.compare(minivit.ViT(**tiny_config(depth=2, **kwargs), dtype="float64", seed=1), x)
    assert max(diffs.values()) < 1e-10, diffs


@needs_mkl
def test_choose_times_both_and_takes_onemkl_only_where_it_wins():
    model = minivit.ViT(**tiny_config(depth=1))
    seconds = {("matrix", "openblas"): 1.0, ("matrix", "mkl"): 0.5,
               ("batched", "openblas"): 1.0, ("batched", "mkl"): 0.99}   # within MIN_GAIN: NumPy's
    line = blas.choose(model, 8, threads=2, clock=lambda kind, lib: seconds[(kind, lib)])
    assert blas.current() == {"matrix": "mkl", "batched": "openblas"}
    assert line == ("BLAS: matrix products on oneMKL (oneMKL 2.00x NumPy's speed), batched products "
                    "on NumPy's (oneMKL 1.01x NumPy's speed)")
    line = blas.choose(model, 8, threads=2)            # timed for real: some choice, said
    assert line.startswith("BLAS: matrix products on ")


def test_product_shapes_are_one_shards_linear_and_attention_products():
    model = minivit.ViT(**tiny_config(depth=1))        # 8x8 images, 4x4 patches: 5 tokens
    c = model.config
    shapes = blas.product_shapes(model, batch_size=10, threads=4)    # 3 images a shard
    M = 3 * (c.num_patches + 1)
    assert ((M, c.embed_dim), (c.embed_dim, 3 * c.embed_dim)) in shapes["matrix"]
    assert ((c.hidden, M), (M, c.embed_dim)) in shapes["matrix"]
    assert shapes["batched"][0][0] == (3, c.num_heads, 5, c.embed_dim // c.num_heads)


def test_the_setting_and_a_missing_onemkl_say_what_to_do(monkeypatch):
    model = minivit.ViT(**tiny_config(depth=1))
    monkeypatch.setenv(blas.ENV_VAR, "fastest")
    with pytest.raises(BadValue, match="MINIVIT_BLAS='fastest' is not one of auto, openblas, mkl"):
        blas.choose(model, 8)
    assert issubclass(BadValue, ValueError) and issubclass(MissingPackage, ImportError)
    monkeypatch.setattr(blas, "find_mkl", lambda: None)
    monkeypatch.setenv(blas.ENV_VAR, "mkl")
    with pytest.raises(MissingPackage, match=r"pip install minivit\[mkl\]"):
        blas.choose(model, 8)
    monkeypatch.setenv(blas.ENV_VAR, "openblas")
    assert blas.choose(model, 8) == "BLAS: openblas (MINIVIT_BLAS=openblas)"
    assert blas.current() == {"matrix": "openblas", "batched": "openblas"}
    monkeypatch.delenv(blas.ENV_VAR)
    assert "oneMKL not installed" in blas.choose(model, 8)
    assert blas.current() == {"matrix": "openblas", "batched": "openblas"}


@needs_mkl
def test_a_resumed_run_keeps_the_blas_it_began_with(tmp_path, monkeypatch):
    """The choice is saved with the run (checkpoint meta "blas"): a resumed run takes it
    again instead of timing anew, so it ends bit for bit as a run never stopped; where
    oneMKL is gone, the run goes on and says it is no longer bit for bit."""
    from minivit import checkpoint as ckpt
    from minivit.config import TrainConfig
    from minivit.train import train
    from helpers import TINY, quiet, same_checkpoints

    cfg = TrainConfig.from_preset("sample", epochs=2, **TINY)
    kw = dict(progress=False, plots=False)
    monkeypatch.setenv(blas.ENV_VAR, "mkl")
    train(cfg, out=tmp_path / "straight", log=quiet, **kw)
    train(cfg, out=tmp_path / "halted", stop_after_epochs=1, log=quiet, **kw)
    assert ckpt.load(tmp_path / "halted" / "checkpoint.npz")[2]["blas"] == {"matrix": "mkl", "batched": "mkl"}
    monkeypatch.delenv(blas.ENV_VAR)
    blas.set_blas("openblas")
    said = []
    train(None, out=tmp_path / "halted", resume=True, log=said.append, **kw)
    assert "BLAS: as the run began: matrix products on oneMKL, batched products on oneMKL" in said
    same_checkpoints(tmp_path / "straight" / "checkpoint.npz", tmp_path / "halted" / "checkpoint.npz")
    model = minivit.ViT(**tiny_config(depth=1))
    monkeypatch.setattr(blas, "find_mkl", lambda: None)
    assert "not bit for bit" in blas.choose(model, 8, previous={"matrix": "mkl", "batched": "openblas"})
    assert blas.current() == {"matrix": "openblas", "batched": "openblas"}
