"""Bad values raise errors Python code catches by their built-in type (ValueError,
ImportError, RuntimeError), and are MinivitError for the command line's one-line messages
(the model's input checks: test_model_inputs.py)."""

import importlib
import inspect

import pytest

import minivit
from minivit.engine import backend
from minivit.engine.config import ViTConfig
from minivit.engine.errors import BadValue, MinivitError, MissingPackage, NoDevice

BUILTINS = (ValueError, TypeError, ImportError, RuntimeError, OSError)


def test_an_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        minivit.ViT(backend="tpu")
    with pytest.raises(MinivitError):
        backend.get_xp("tpu")


def test_a_bad_model_setting_is_a_value_error():
    with pytest.raises(ValueError, match="unknown norm 'batchnorm'"):
        ViTConfig(norm="batchnorm").validate()


@pytest.mark.parametrize("missing,error,builtin,why", [
    (True, MissingPackage, ImportError, "CuPy is not installed (no module). Install it."),
    (False, NoDevice, RuntimeError, "no NVIDIA GPU is usable"),
], ids=["no-cupy", "no-gpu"])
def test_a_backend_that_cannot_run_is_a_builtin_error(monkeypatch, missing, error, builtin, why):
    """A missing CuPy is an ImportError, CuPy without a GPU a RuntimeError."""
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_error", why)
    monkeypatch.setattr(backend, "_cupy_missing", missing)
    with pytest.raises(builtin, match=why[:12]) as e:
        backend.get_xp("cupy")
    assert isinstance(e.value, error) and isinstance(e.value, MinivitError)


@pytest.mark.parametrize("module", ["minivit.errors", "minivit.checkpoint", "minivit.data",
                                    "minivit.files", "minivit.runlock"])
def test_every_error_of_minivit_is_also_a_builtin_error(module):
    errors = [c for _, c in inspect.getmembers(importlib.import_module(module), inspect.isclass)
              if issubclass(c, MinivitError) and c is not MinivitError]
    assert errors
    for c in errors:
        assert issubclass(c, BUILTINS), f"{c.__name__} is not catchable as a built-in error"
    assert issubclass(BadValue, ValueError)
