"""A first convolution that starts as a whitening of image patches (the data-dependent
initialization of the airbench CIFAR-10 recipes), for the stem's first 3x3 conv.

A k x k patch of a normalized image, over its C channels, is a vector p of C k^2 numbers.
Over the training images its covariance is Sigma = E[p p^T] = V diag(lam) V^T (eigh). A
filter w_j = v_j / sqrt(lam_j + eps) gives w_j . p a variance of lam_j / (lam_j + eps),
about 1, and two such outputs are uncorrelated: the conv starts by decorrelating the
pixels of each neighbourhood instead of mixing them at random. The stem keeps S channels:
the S/2 directions of largest variance and their negatives (the GELU after the conv would
otherwise drop the negative half of each). The filters train like any other weight.

    w = whitening_filters(images, channels=24)     # images: uint8 [N, 3, H, W] -> [24, 3, 3, 3]
"""

import numpy as np

from .engine.backend import to_device
from .data import normalize

KERNEL = 3        # the stem's convs are 3x3
EPS = 5e-4        # added to each variance: the flattest directions are not blown up
IMAGES = 5000     # the training images the covariance is estimated from


def patch_covariance(images, k=KERNEL, chunk=500):
    """E[p p^T] over every k x k patch (no padding) of float images [N, C, H, W] ->
    [C k k, C k k], float64; patches are flattened channel-major, as a conv weight's
    [C, k, k] axes."""
    n, c = images.shape[:2]
    total, count = np.zeros((c * k * k, c * k * k)), 0
    for i in range(0, n, chunk):
        x = np.asarray(images[i:i + chunk], dtype=np.float64)
        windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))
        p = windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)   # [patches, C k k]
        total += p.T @ p
        count += len(p)
    return total / count


def whitening_filters(images, channels, mean, std, k=KERNEL, eps=EPS):
    """uint8 training images [N, C, H, W] (normalized with the run's mean and std) ->
    conv weights [channels, C, k, k]: the channels/2 whitening filters of largest
    variance, then their negatives."""
    if channels % 2 or not 2 <= channels <= 2 * images.shape[1] * k * k:
        raise ValueError(f"a whitening stem needs an even number of channels, at most "
                         f"{2 * images.shape[1] * k * k}, got {channels}")
    x = normalize(images, mean, std, dtype="float64")
    lam, vec = np.linalg.eigh(patch_covariance(x, k))                  # ascending
    top = np.argsort(lam)[::-1][:channels // 2]
    w = (vec[:, top] / np.sqrt(lam[top] + eps)).T                      # [channels/2, C k k]
    w = w.reshape(channels // 2, images.shape[1], k, k)
    return np.concatenate([w, -w])


def whiten_stem(model, images, mean, std):
    """Set model's first stem conv to whitening filters of the first IMAGES of images
    (uint8 [N, C, H, W]) and its bias to 0; returns the filters (host)."""
    name = model.config.stem_convs[0][0]
    w = whitening_filters(images[:IMAGES], model.config.stem_channels, mean, std)
    model.params[f"{name}.weight"][...] = to_device(w, model.xp, model.dtype)
    model.params[f"{name}.bias"][...] = 0
    return w
