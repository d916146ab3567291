"""evaluate.py: accuracy helpers, and test-time augmentation: the mirror image (flip), six
shifted and mirrored views (crops, weighted as airbench), every view set from one set of
forward passes."""

import numpy as np
import pytest

import minivit
from minivit.evaluate import confusion_matrix, per_class_accuracy

from helpers import tiny_config


def test_accuracy_helpers():
    y, p = np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0])
    assert per_class_accuracy(y, p, 3) == [0.5, 1.0, pytest.approx(2 / 3)]
    np.testing.assert_array_equal(confusion_matrix(y, p, 3), [[1, 1, 0], [0, 1, 0], [1, 0, 2]])


def _tta_case(backend):
    """A tiny float64 model with random weights (so that views matter) and its loader."""
    from minivit.data import Loader
    model = minivit.ViT(**tiny_config(num_classes=10), dtype="float64", backend=backend)
    rng = np.random.default_rng(0)
    model.flat_params[...] = model.xp.asarray(rng.normal(0.0, 0.5, model.flat_params.shape))
    x = rng.integers(0, 256, (12, 3, 8, 8)).astype(np.uint8)
    y = rng.integers(0, 10, 12)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.3, 0.25]
    return model, x, y, mean, std, Loader(x, y, 5, model.xp, mean, std, dtype="float64")


def test_flip_averages_the_logits_of_each_image_and_its_mirror_image(backend):
    """evaluate(views="flip"): the logits are the mean of the model's on x and on x mirrored
    left-right; loss, accuracy and predictions follow from them."""
    from minivit.data import normalize
    from minivit.evaluate import evaluate
    model, x, y, mean, std, loader = _tta_case(backend)
    loss, acc, preds = evaluate(model, loader, views="flip")
    images = normalize(model.xp.asarray(x), mean, std, "float64")
    logits = minivit.to_host(0.5 * (model.forward(images) + model.forward(images[..., ::-1])))
    assert loss == pytest.approx(float(minivit.cross_entropy(logits, y)[0]), rel=1e-12)
    np.testing.assert_array_equal(preds, logits.argmax(axis=1))
    assert acc == pytest.approx(float((logits.argmax(axis=1) == y).mean()))
    assert abs(evaluate(model, loader)[0] - loss) > 1e-3          # the mirror images count


def test_crops_weight_six_views_as_airbench(backend):
    """evaluate(views="crops"): the image and its mirror image weigh 1/4 each; the two copies
    shifted CROP_SHIFT (2) pixels along the diagonal (edges reflected: row -1 reads row 1,
    row H reads row H-2) and their mirror images 1/8 each. The shifts are built here by
    indexing."""
    from minivit.data import normalize
    from minivit.evaluate import CROP_SHIFT as s, evaluate
    model, x, y, mean, std, loader = _tta_case(backend)
    H = x.shape[-1]
    down = np.abs(np.arange(H) - s)                       # view row i shows row i - s
    up = (H - 1) - np.abs(np.arange(H) - (H - 1 - s))     # view row i shows row i + s
    assert s == 2 and list(down[:4]) == [2, 1, 0, 1] and list(up[-4:]) == [H - 2, H - 1, H - 2, H - 3]
    views = [(x, 0.25)] + [(x[..., idx[:, None], idx[None, :]], 0.125) for idx in (down, up)]
    logits = 0
    for view, weight in views:
        images = normalize(model.xp.asarray(np.ascontiguousarray(view)), mean, std, "float64")
        for v in (images, images[..., ::-1]):
            logits = logits + weight * minivit.to_host(model.forward(v))
    loss, acc, preds = evaluate(model, loader, views="crops")
    assert loss == pytest.approx(float(minivit.cross_entropy(logits, y)[0]), rel=1e-12)
    np.testing.assert_array_equal(preds, logits.argmax(axis=1))
    assert acc == pytest.approx(float((logits.argmax(axis=1) == y).mean()))
    assert abs(evaluate(model, loader, views="flip")[0] - loss) > 1e-3   # the shifts count
    with pytest.raises(ValueError, match="choose one of one, flip, crops"):
        evaluate(model, loader, views="five")


def test_every_view_set_at_once_runs_each_forward_pass_once(backend):
    """evaluate_views: for every view set, exactly what evaluate gives for it alone, from
    six forward passes a batch (the crops' views hold the flip pair's, which hold the image's)
    where one at a time takes 1 + 2 + 6."""
    from minivit.evaluate import VIEWS, evaluate, evaluate_views
    model, x, y, mean, std, loader = _tta_case(backend)

    class Counting:                                   # the model, counting its forward passes
        passes = 0

        def forward(self, x, **kw):
            self.passes += 1
            return model.forward(x, **kw)

    counting = Counting()
    scores = evaluate_views(counting, loader, views=VIEWS)
    batches = len(range(0, len(y), 5))
    assert list(scores) == list(VIEWS) and counting.passes == 6 * batches
    for v in VIEWS:
        loss, acc, preds = evaluate(model, loader, views=v)
        assert scores[v][0] == loss and scores[v][1] == acc
        np.testing.assert_array_equal(scores[v][2], preds)
    counting.passes = 0
    evaluate_views(counting, loader, views=("one", "flip"))
    assert counting.passes == 2 * batches
