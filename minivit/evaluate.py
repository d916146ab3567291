"""Scoring: loss and accuracy over a loader, per-class accuracy, the confusion matrix,
and one function that scores a checkpoint on the test set (for `train` and `eval`)."""

import numpy as np

from . import checkpoint as ckpt
from . import distributed
from .engine.backend import array_module, to_host
from .data import CLASSES, Loader, data_or_sample, load_test
from .engine.loss import cross_entropy


VIEWS = ("one", "flip", "crops")     # test-time augmentation: the views each image is scored on
CROP_SHIFT = 2                       # crops: pixels each shifted copy moves along the diagonal


def tta_logits(net, images, views="one"):
    """The logits of images [B, C, H, W], averaged over test-time views -> [B, classes].
    one: the image alone. flip: the mean over the image and its mirror image. crops:
    half the flip pair's mean, plus half the mean of the flip pairs of two copies shifted
    CROP_SHIFT pixels along the diagonal, one each way (edges reflected): six views an
    image, weighted as airbench scores CIFAR-10 (which shifts one pixel; two scored higher
    here, benchmarks/ACCURACY.md)."""
    return view_logits(net, images, (views,))[views]


def view_logits(net, images, views=VIEWS):
    """{view set: logits [B, classes]} for each of views (names from VIEWS, tta_logits),
    every forward pass run once: the six crops hold the flip pair, which holds the image."""
    def forward(x):
        return net.forward(x, keep_cache=False)

    def with_mirror(x, logits):               # x's logits and its mirror image's, equally
        return 0.5 * (logits + forward(x[..., ::-1]))

    out = {"one": forward(images)}
    if "flip" in views or "crops" in views:
        out["flip"] = with_mirror(images, out["one"])
    if "crops" in views:
        H, W, s = *images.shape[-2:], CROP_SHIFT
        padded = array_module(images).pad(images, ((0, 0), (0, 0), (s, s), (s, s)),
                                          mode="reflect")               # [B, C, H+2s, W+2s]
        copies = (padded[..., :H, :W], padded[..., 2 * s:, 2 * s:])     # shifted each way
        shifted = 0.5 * sum(with_mirror(c, forward(c)) for c in copies)
        out["crops"] = 0.5 * out["flip"] + 0.5 * shifted
    return {v: out[v] for v in views}


def evaluate(net, loader, world=None, views="one"):
    """-> (mean loss, accuracy, predictions int [N] on the host), no gradients kept.
    net: a ViT or anything with its forward (fast.FastRunner). world: a distributed.World
    (default distributed.world(), as everywhere: every rank of an MPI job, else this
    process alone); each rank scores its rows of every batch, and the results are
    combined. views: test-time augmentation, one of VIEWS (tta_logits)."""
    return evaluate_views(net, loader, world, (views,))[views]


def evaluate_views(net, loader, world=None, views=VIEWS):
    """evaluate under several view sets at once -> {view set: (loss, accuracy, predictions)},
    each forward pass run once for all of them (view_logits)."""
    for v in views:
        if v not in VIEWS:
            raise ValueError(f"views={v!r}: choose one of {', '.join(VIEWS)}")
    world = world or distributed.world()
    loss_sum, preds = dict.fromkeys(views, 0.0), {v: [] for v in views}
    for images, labels in loader:
        rows = world.part(len(labels))
        for v, logits in view_logits(net, images[rows], views).items():
            if len(logits):
                loss, _ = cross_entropy(logits, labels[rows])
                loss_sum[v] += float(loss) * len(logits)
            preds[v].append(world.gather(to_host(logits.argmax(axis=1))))
    y = to_host(loader.y)
    scores = {}
    for v in views:
        total = world.sum([loss_sum[v]])[0]
        p = np.concatenate(preds[v]) if preds[v] else np.zeros(0, dtype=np.int64)
        scores[v] = (0.0, 0.0, p) if not len(y) else (total / len(y), float((p == y).mean()), p)
    return scores


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
    test batch is read. wrap(model) may return a faster runner (fast.FastRunner); views: the
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
