import os
import sys

import pytest

from minivit.backend import gpu_available, gpu_unavailable_reason

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))  # torch_simplevit, for optional checks


def _backends():
    reason = None if gpu_available() else f"CuPy backend unavailable: {gpu_unavailable_reason()}"
    return ["numpy", pytest.param("cupy", marks=[pytest.mark.gpu,
                                                 pytest.mark.skipif(reason is not None,
                                                                    reason=reason or "")])]


BACKENDS = _backends()


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Runs a test once per backend; the CuPy run skips, with the reason, without a GPU."""
    return request.param


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    monkeypatch.delenv("MINIVIT_BACKEND", raising=False)


def tiny_config(**over):
    cfg = dict(img_size=8, patch_size=4, in_chans=3, embed_dim=8, depth=2, num_heads=2,
               mlp_ratio=2.0, num_classes=3)
    cfg.update(over)
    return cfg
