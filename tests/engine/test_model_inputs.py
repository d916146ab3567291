"""What the ViT is given: images of the wrong shape, type or values, arrays of the other
backend, a gradient of the wrong shape; each refused with the problem and the fix, as the
built-in error Python code catches (ValueError, TypeError)."""

import numpy as np
import pytest

import minivit

from helpers import tiny_config


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


def test_gradient_of_the_wrong_shape():
    model = minivit.ViT(**tiny_config())
    model.forward(np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match=r"dlogits must have the logits' shape \(2, 3\), got \(2, 4\)"):
        model.backward(np.zeros((2, 4)))
