import numpy as np
import pytest

import minivit
from minivit import backend


def test_numpy_backend_and_helpers():
    xp = backend.get_xp("numpy")
    assert xp is np
    a = backend.to_device([1.0, 2.0], xp, "float32")
    assert a.dtype == np.float32 and backend.array_module(a) is np
    assert isinstance(backend.to_host(a), np.ndarray)


def test_env_var_selects_backend(monkeypatch):
    monkeypatch.setenv("MINIVIT_BACKEND", "numpy")
    assert backend.resolve_backend(None) == "numpy"
    monkeypatch.setenv("MINIVIT_BACKEND", "tpu")
    with pytest.raises(ValueError, match="unknown backend 'tpu'.*MINIVIT_BACKEND"):
        backend.resolve_backend(None)


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown backend 'torch': choose one of numpy, cupy, auto"):
        minivit.ViT(backend="torch")


def test_auto_falls_back_to_numpy_without_gpu():
    expected = "cupy" if backend.gpu_available() else "numpy"
    assert backend.resolve_backend("auto") == expected


@pytest.mark.skipif(backend.gpu_available(), reason="a GPU is usable here")
def test_cupy_without_gpu_says_why_and_how_to_fix():
    with pytest.raises(RuntimeError) as err:
        minivit.ViT(backend="cupy")
    msg = str(err.value)
    assert "backend 'cupy' was requested but" in msg
    assert "pip install -e .[gpu]" in msg
    assert backend.gpu_unavailable_reason() in msg


def test_round_trip_host_device(backend):
    xp = minivit.get_xp(backend)
    host = np.arange(6.0).reshape(2, 3)
    dev = minivit.to_device(host, xp)
    assert backend_module_name(dev) == backend
    np.testing.assert_array_equal(minivit.to_host(dev), host)


def backend_module_name(a):
    return backend.backend_name(backend.array_module(a))
