import os
import sys

import pytest

from minivit.backend import gpu_available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))  # torch_simplevit, for optional checks
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # cupy_strict


def _backends():
    """numpy; the real CuPy where a GPU works, else the strict CuPy stand-in (cupy_strict.py)."""
    if gpu_available():
        return ["numpy", pytest.param("cupy", marks=pytest.mark.gpu)]
    return ["numpy", "cupy-strict"]


BACKENDS = _backends()


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Runs a test once per backend and returns the backend name to pass to minivit:
    "numpy", or "cupy" (a real GPU, or, without one, the strict stand-in installed as
    CuPy for this test only)."""
    if request.param == "cupy-strict":
        import cupy_strict
        cupy_strict.install(monkeypatch)
        return "cupy"
    return request.param


@pytest.fixture
def cupy_strict_module(monkeypatch):
    """The strict stand-in installed as CuPy (for tests of the stand-in and the budget)."""
    import cupy_strict
    return cupy_strict.install(monkeypatch)


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    monkeypatch.delenv("MINIVIT_BACKEND", raising=False)


def tiny_config(**over):
    cfg = dict(img_size=8, patch_size=4, in_chans=3, embed_dim=8, depth=2, num_heads=2,
               mlp_ratio=2.0, num_classes=3)
    cfg.update(over)
    return cfg
