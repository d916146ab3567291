"""engine/backend.py: the NumPy/CuPy switch, why CuPy cannot be used, host <-> device
copies, and @kernel."""

import sys
import types

import numpy as np
import pytest

import minivit
from minivit.engine import backend


def test_numpy_backend_and_helpers():
    xp = backend.get_xp("numpy")
    assert xp is np
    a = backend.to_device([1.0, 2.0], xp, "float32")
    assert a.dtype == np.float32 and backend.array_module(a) is np
    assert isinstance(backend.to_host(a), np.ndarray)


def test_env_var_selects_backend_and_a_bad_name_lists_the_choices(monkeypatch):
    monkeypatch.setenv("MINIVIT_BACKEND", "numpy")
    assert backend.resolve_backend(None) == "numpy"
    monkeypatch.setenv("MINIVIT_BACKEND", "tpu")
    with pytest.raises(ValueError, match=r"unknown backend 'tpu': choose one of numpy, cupy, auto "
                                         r"\(or set MINIVIT_BACKEND to one of them\)"):
        backend.resolve_backend(None)


def _fake_cupy(monkeypatch, devices=1, device_error=None, library_error=None):
    """A cupy module that imports, with `devices` GPUs (or getDeviceCount raising
    device_error) whose matmul raises library_error."""
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
    _forget_cupy(monkeypatch)


def _forget_cupy(monkeypatch):
    """As if this process had not looked for CuPy yet."""
    for name, value in (("_cupy", None), ("_cupy_erf", None), ("_cupy_error", None),
                        ("_cupy_missing", False)):
        monkeypatch.setattr(backend, name, value)


def test_auto_is_cupy_with_a_usable_gpu_and_numpy_without(monkeypatch):
    _forget_cupy(monkeypatch)
    monkeypatch.setitem(sys.modules, "cupy", None)                  # CuPy not installed
    assert backend.resolve_backend("auto") == "numpy" and backend.get_xp("auto") is np
    _fake_cupy(monkeypatch, devices=0)                              # CuPy, but no GPU
    assert backend.resolve_backend("auto") == "numpy"
    _fake_cupy(monkeypatch)                                         # a usable GPU
    assert backend.resolve_backend("auto") == "cupy" and backend.get_xp("auto") is sys.modules["cupy"]


def test_the_gpu_check_tells_the_three_failures_apart(monkeypatch):
    _forget_cupy(monkeypatch)
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


def test_asking_for_cupy_without_a_gpu_says_why_and_how_to_fix(monkeypatch):
    """The message gives the reason the GPU check found and the way back to NumPy (the
    error's types: test_errors.py)."""
    _fake_cupy(monkeypatch, devices=0)
    with pytest.raises(RuntimeError) as err:
        minivit.ViT(backend="cupy")
    msg = str(err.value)
    assert msg.startswith("backend 'cupy' was requested but no NVIDIA GPU is usable")
    assert backend.gpu_unavailable_reason() in msg and "--backend numpy; backend='numpy' from Python" in msg


def test_round_trip_host_device(backend):
    xp = minivit.get_xp(backend)
    host = np.arange(6.0).reshape(2, 3)
    dev = minivit.to_device(host, xp)
    assert _backend_of(dev) == backend
    np.testing.assert_array_equal(minivit.to_host(dev), host)


def _backend_of(a):
    return backend.backend_name(backend.array_module(a))


def test_a_kernel_runs_its_body_on_numpy_or_its_numpy_version():
    """@kernel: on NumPy the body runs with xp = numpy (or the `numpy=` function instead)."""
    @backend.kernel
    def axpy(xp, a, x, y):
        """a x + y."""
        return a * x + y

    x, y = np.arange(3.0), np.ones(3)
    np.testing.assert_array_equal(axpy(2.0, x, y), [1.0, 3.0, 5.0])
    assert axpy.__name__ == "axpy" and axpy.__doc__ == "a x + y."
    calls = []
    faster = backend.kernel(axpy.body, numpy=lambda a, x, y: calls.append(1) or a * x + y)
    np.testing.assert_array_equal(faster(2.0, x, y), [1.0, 3.0, 5.0])
    assert calls == [1]
