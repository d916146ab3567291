import numpy as np
import pytest

import minivit
from minivit.engine import backend
from minivit.errors import MinivitError


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
    with pytest.raises(MinivitError, match="unknown backend 'tpu'.*MINIVIT_BACKEND"):
        backend.resolve_backend(None)


def test_unknown_backend_names_the_choices():
    with pytest.raises(MinivitError, match=r"unknown backend 'torch': choose one of numpy, cupy, auto"):
        minivit.ViT(backend="torch")


def test_auto_is_cupy_with_a_usable_gpu_and_numpy_without(monkeypatch):
    import sys
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_error", None)
    monkeypatch.setitem(sys.modules, "cupy", None)                  # CuPy not installed
    assert backend.resolve_backend("auto") == "numpy" and backend.get_xp("auto") is np
    _fake_cupy(monkeypatch, devices=0)                              # CuPy, but no GPU
    assert backend.resolve_backend("auto") == "numpy"
    _fake_cupy(monkeypatch)                                         # a usable GPU
    assert backend.resolve_backend("auto") == "cupy" and backend.get_xp("auto") is sys.modules["cupy"]


@pytest.mark.skipif(backend.gpu_available(), reason="a GPU is usable here")
def test_cupy_without_gpu_says_why_and_how_to_fix():
    with pytest.raises(MinivitError) as err:
        minivit.ViT(backend="cupy")
    msg = str(err.value)
    assert "backend 'cupy' was requested but" in msg
    assert backend.gpu_unavailable_reason() in msg
    assert "backend='numpy'" in msg


def test_round_trip_host_device(backend):
    xp = minivit.get_xp(backend)
    host = np.arange(6.0).reshape(2, 3)
    dev = minivit.to_device(host, xp)
    assert backend_module_name(dev) == backend
    np.testing.assert_array_equal(minivit.to_host(dev), host)


def backend_module_name(a):
    return backend.backend_name(backend.array_module(a))


def _fake_cupy(monkeypatch, devices=1, device_error=None, library_error=None):
    """A cupy module that imports, with `devices` GPUs (or getDeviceCount raising
    device_error) whose matmul raises library_error."""
    import sys
    import types

    class Array:
        def __matmul__(self, other):
            if library_error:
                raise library_error
            return self

        def sum(self):
            return 1.0

    def count():
        if device_error:
            raise device_error
        return devices
    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=count))
    cupy.ones = lambda shape, dtype=None: Array()
    special = types.ModuleType("cupyx.scipy.special")
    special.erf = lambda a: a
    for name, module in (("cupy", cupy), ("cupyx", types.ModuleType("cupyx")),
                         ("cupyx.scipy", types.ModuleType("cupyx.scipy")),
                         ("cupyx.scipy.special", special)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_erf", None)
    monkeypatch.setattr(backend, "_cupy_error", None)


def test_the_gpu_check_tells_the_three_failures_apart(monkeypatch):
    import sys
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_error", None)
    monkeypatch.setitem(sys.modules, "cupy", None)                  # not installed
    assert not backend.gpu_available()
    assert backend.gpu_unavailable_reason().startswith("CuPy is not installed")
    assert "pip install -e .[gpu]" in backend.gpu_unavailable_reason()

    _fake_cupy(monkeypatch, device_error=RuntimeError("cudaErrorInsufficientDriver"))
    assert not backend.gpu_available()
    assert "no NVIDIA GPU is usable: no driver or no device" in backend.gpu_unavailable_reason()
    assert "nvidia-smi" in backend.gpu_unavailable_reason()
    _fake_cupy(monkeypatch, devices=0)
    assert "no CUDA device found" in backend.gpu_unavailable_reason()

    _fake_cupy(monkeypatch, library_error=RuntimeError("libcublas.so.12: cannot open shared object"))
    assert not backend.gpu_available()
    reason = backend.gpu_unavailable_reason()
    assert "CUDA libraries are missing or broken" in reason and "libcublas" in reason
    assert "cupy-cuda12x[ctk]" in reason

    _fake_cupy(monkeypatch)                                         # everything works
    assert backend.gpu_available() and backend.gpu_unavailable_reason() is None
