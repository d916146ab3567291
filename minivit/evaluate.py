"""Scoring: loss and accuracy over a loader, per-class accuracy, the confusion matrix,
and one function that scores a checkpoint on the test set (for `train` and `eval`)."""

import numpy as np

from . import checkpoint as ckpt
from . import distributed
from .backend import array_module, to_host
from .data import CLASSES, Loader, data_or_sample, load_test
from .loss import cross_entropy


VIEWS = ("one", "flip", "crops")     # test-time augmentation: the views each image is scored on
CROP_SHIFT = 2                       # crops: pixels each shifted copy moves along the diagonal


def tta_logits(net, images, views="one"):
    """The logits of images [B, C, H, W], averaged over test-time views -> [B, classes].
    one: the image alone. flip: the mean over the image and its mirror image. crops:
    half the flip pair's mean, plus half the mean of the flip pairs of two copies shifted
    CROP_SHIFT pixels along the diagonal, one each way (edges reflected): six views an
    image, weighted as airbench scores CIFAR-10 (which shifts one pixel; two scored higher
    here, benchmarks/ACCURACY.md)."""
    def forward(x):
        return net.forward(x, keep_cache=False)

    def mirrored(x):                          # the image and its mirror image, equally
        return 0.5 * (forward(x) + forward(x[..., ::-1]))

    if views == "one":
        return forward(images)
    if views == "flip":
        return mirrored(images)
    H, W, s = *images.shape[-2:], CROP_SHIFT
    padded = array_module(images).pad(images, ((0, 0), (0, 0), (s, s), (s, s)),
                                      mode="reflect")                   # [B, C, H+2s, W+2s]
    shifted = 0.5 * (mirrored(padded[..., :H, :W]) + mirrored(padded[..., 2 * s:, 2 * s:]))
    return 0.5 * mirrored(images) + 0.5 * shifted


def evaluate(net, loader, world=None, views="one"):
    """-> (mean loss, accuracy, predictions int [N] on the host), no gradients kept.
    net: a ViT or anything with its forward (fast.FastViT). world: a distributed.World
    (default distributed.world(), as everywhere: every rank of an MPI job, else this
    process alone); each rank scores its rows of every batch, and the results are
    combined. views: test-time augmentation, one of VIEWS (tta_logits)."""
    if views not in VIEWS:
        raise ValueError(f"views={views!r}: choose one of {', '.join(VIEWS)}")
    world = world or distributed.world()
    loss_sum, preds = 0.0, []
    for images, labels in loader:
        rows = world.part(len(labels))
        logits = tta_logits(net, images[rows], views)
        if len(logits):
            loss, _ = cross_entropy(logits, labels[rows])
            loss_sum += float(loss) * len(logits)
        preds.append(world.gather(to_host(logits.argmax(axis=1))))
    loss_sum = world.sum([loss_sum])[0]
    preds = np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)
    y = to_host(loader.y)
    if not len(y):
        return 0.0, 0.0, preds
    return loss_sum / len(y), float((preds == y).mean()), preds


def per_class_accuracy(y_true, y_pred, num_classes=len(CLASSES)):
    return [float((y_pred[y_true == c] == c).mean()) if (y_true == c).any() else float("nan")
            for c in range(num_classes)]


def confusion_matrix(y_true, y_pred, num_classes=len(CLASSES)):
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def score_checkpoint(path, data=None, backend=None, batch_size=500, log=None, wrap=None, world=None,
                     views="one"):
    """Score a checkpoint on a test set: data (a folder), else the folder the run trained
    on, else the full CIFAR-10 wherever it is found, else the shipped sample. Only the
    test batch is read. wrap(model) may return a faster runner (fast.FastViT); views: the
    test-time augmentation (tta_logits).
    -> dict: accuracy, loss, per_class, preds, x_test, y_test, folder, source, model, meta."""
    model, meta = ckpt.load_model(path, backend=backend)
    folder, source = data_or_sample(data if data is not None else meta.get("data_arg"),
                                    need="test", log=log)
    x_test, y_test = load_test(folder)
    loader = Loader(x_test, y_test, batch_size, model.xp, meta["mean"], meta["std"],
                    dtype=model.config.dtype)
    loss, acc, preds = evaluate(wrap(model) if wrap else model, loader, world, views)
    return dict(accuracy=acc, loss=loss, per_class=per_class_accuracy(y_test, preds), preds=preds,
                x_test=x_test, y_test=y_test, folder=str(folder), source=source, model=model,
                meta=meta)
